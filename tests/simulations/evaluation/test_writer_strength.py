"""writer_strength: cloud vs device from the instruction, the cloud with the context, and the cloud's LoRA."""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, get_peft_model

from fedcogen.dataset import FederationConfig, generate_federation
from fedcogen.models import load_model
from fedcogen.simulations.evaluation.writer_strength import reference_loss, writer_strength


def test_the_adapter_and_the_context_each_change_the_measured_loss(tmp_path):
    tasks = generate_federation(FederationConfig(n_users=2, seed=0)).tasks["test"][:3]
    torch.manual_seed(0)
    peft = get_peft_model(load_model("tiny-large").model,
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(str(tmp_path / "lora"))
    bare = writer_strength("tiny", "tiny-large", tasks, 128)
    tuned = writer_strength("tiny", "tiny-large", tasks, 128, cloud_adapter=str(tmp_path / "lora"))
    assert tuned["cloud_adapter"] == str(tmp_path / "lora") and bare["cloud_adapter"] is None
    assert tuned["device_loss"] == bare["device_loss"]  # the device is untouched
    assert abs(tuned["cloud_loss"] - bare["cloud_loss"]) > 1e-3
    assert abs(bare["cloud_context_loss"] - bare["cloud_loss"]) > 1e-3
    assert math.isclose(bare["context_gap"], bare["cloud_loss"] - bare["cloud_context_loss"])
    assert bare["cloud_stronger"] == (bare["cloud_loss"] < bare["device_loss"])
    # the shared copy with the adapter merged is a separate model: the bare cloud's loss is unchanged after it
    assert reference_loss("tiny-large", tasks, 128) == bare["cloud_loss"]
