"""The cloud service's ``adapter`` option: the provider's LoRA merged into the model it serves."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fedcogen.cli import build_parser
from fedcogen.client.cogen.cloud_client import CloudClient
from fedcogen.models import ModelError, load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

INSTRUCTION = "Write a short note to my landlord about the broken heater."


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A random (non-zero) LoRA of tiny-large saved the PEFT way, and the PEFT model that made it."""
    folder = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    peft = get_peft_model(load_model("tiny-large").model,
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False))
    peft.save_pretrained(str(folder))
    return folder, peft.eval()


def test_the_served_model_is_the_base_with_the_adapter_merged(lora_dir):
    folder, peft = lora_dir
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True, adapter=str(folder)))
    base_srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True))
    try:
        ids = torch.tensor([[1, 17, 230, 4051, 9, 88]])
        with torch.inference_mode():
            served, want = srv.service.lm.model(input_ids=ids).logits, peft(input_ids=ids).logits
            base = base_srv.service.lm.model(input_ids=ids).logits
        assert torch.allclose(served, want, atol=1e-4)
        assert not torch.allclose(served, base, atol=1e-3)
        assert "peft" not in type(srv.service.lm.model).__module__  # merged: a plain model for the KV-cache forward
        # and over the wire, through the batched forward: the adapter changes what the cloud writes
        got = CloudClient(srv.address, insecure=True).sketch(INSTRUCTION, max_new_tokens=8)
        ref = CloudClient(base_srv.address, insecure=True).sketch(INSTRUCTION, max_new_tokens=8)
        assert got.generated_tokens > 0 and got.sketch != ref.sketch
    finally:
        srv.stop(grace=0.5)
        base_srv.stop(grace=0.5)


def test_a_folder_that_is_not_a_lora_is_refused_before_serving(tmp_path):
    with pytest.raises(ModelError, match="adapter_config.json"):
        start_cloud_server(CloudConfig(model="tiny-large", insecure=True, adapter=str(tmp_path)))


def test_a_loaded_model_and_an_adapter_together_are_refused(lora_dir):
    with pytest.raises(ValueError, match="adapter"):
        start_cloud_server(CloudConfig(model="tiny-large", insecure=True, adapter=str(lora_dir[0])),
                           lm=load_model("tiny-large"))


def test_an_adapter_with_a_serving_engine_is_refused(lora_dir):
    cfg = CloudConfig(insecure=True, adapter=str(lora_dir[0]), engine_url="http://engine:8000/v1", engine_model="m")
    with pytest.raises(ValueError, match="engine"):
        cfg.validate()


def test_cloud_serve_has_the_adapter_flag():
    args = build_parser().parse_args(["cloud", "serve", "--insecure", "--adapter", "some/lora"])
    assert args.adapter == "some/lora"
