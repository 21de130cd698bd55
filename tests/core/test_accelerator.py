"""The one device setting (fedcogen.accelerator) and that training, evaluation, generation and the cloud honour it.

This machine has no GPU: ``auto`` must resolve to the CPU, ``cuda``/``mps`` must fail with a message that
says what is missing, malformed settings are refused everywhere they enter (run config, CLI flags, cloud
and device configs), and models, batches and adapters end up on the resolved device in fp32.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict

from fedcogen import accelerator
from fedcogen.accelerator import DeviceError, check_setting, compute_dtype, placement, resolve_device
from fedcogen.client.fl import fl_clientapp, node_data
from fedcogen.client.fl.lora_training import encode_examples, eval_loss, train_local
from fedcogen.lora_adapter import LoraSpec, get_adapter, lora_model
from fedcogen.models import load_model, shared_model
from fedcogen.protocols import fl_messages as fm
from fedcogen.run_config import FLSettings, RunConfigError
from fedcogen.simulations.federation.federation import SimulationConfig
from fedcogen.simulations.federation.flwr_run import LocalFederation

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not accelerator.mps_available()


@pytest.mark.skipif(not NO_CUDA, reason="this test is about a machine without CUDA")
def test_auto_resolves_to_cpu_and_cuda_is_a_clear_error():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for text in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=rf"device '{text}' asked for, but .*use --device cpu or auto"):
            resolve_device(text)
    if NO_MPS:
        with pytest.raises(DeviceError, match="no available MPS backend"):
            resolve_device("mps")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:-1", "tpu", "", "cpu:0"])
def test_malformed_settings_are_refused(bad):
    with pytest.raises(DeviceError, match="is not one of: auto"):
        check_setting(bad)
    with pytest.raises(RunConfigError, match="run config 'device'"):
        FLSettings(device=bad)


def test_dtype_is_fp32_on_cpu_and_half_on_gpus(monkeypatch):
    assert compute_dtype(torch.device("cpu")) == torch.float32
    assert placement("cpu") == accelerator.Placement(torch.device("cpu"), torch.float32)
    assert placement("cpu").key == "cpu"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert compute_dtype(torch.device("cuda", 0)) == torch.float16  # pre-Ampere cards
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert compute_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype(torch.device("mps")) == torch.float16


def test_loaded_model_sits_on_the_resolved_device_in_fp32():
    lm = load_model("tiny", device="auto")
    p = next(lm.model.parameters())
    assert p.device == resolve_device("auto") and p.dtype == torch.float32
    assert shared_model("tiny", 0, "auto") is shared_model("tiny", 0, "cpu")  # one copy per real device


@pytest.mark.skipif(not NO_CUDA, reason="this test is about a machine without CUDA")
def test_loading_on_a_missing_gpu_fails_before_reading_weights():
    with pytest.raises(DeviceError, match="device 'cuda' asked for"):
        load_model("tiny", device="cuda")


def test_training_and_evaluation_run_on_the_model_device_with_fp32_master_adapter(monkeypatch):
    lm = lora_model("tiny", 0, LoraSpec(r=2, alpha=4, dropout=0.0), device="auto")
    assert all(p.dtype == torch.float32 and p.device == resolve_device("auto") for p in lm.params.values())
    data = encode_examples(lm.tokenizer, [("say hi", "hi there"), ("say bye", "bye now")], max_seq_len=64)
    seen: list[torch.device] = []
    real_to_device = accelerator.to_device

    def spy(batch, device):
        seen.append(device)
        moved = real_to_device(batch, device)
        assert all(t.device == device for t in moved.values())
        return moved

    monkeypatch.setattr("fedcogen.client.fl.lora_training.to_device", spy)
    before = get_adapter(lm)
    result = train_local(lm, data, steps=2, batch_size=2, lr=1e-2, seed=0)
    loss, n_tok = eval_loss(lm, data)
    assert result.steps == 2 and n_tok > 0 and loss == loss
    assert seen == [resolve_device("auto")] * 3  # two training steps + one evaluation batch
    after = get_adapter(lm)
    assert any((after[k] != before[k]).any() for k in after)  # training changed the fp32 adapter
    assert all(v.dtype.name == "float32" for v in after.values())


def test_device_is_a_client_setting_and_the_node_config_wins():
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    settings = FLSettings(device="cpu")
    assert settings.client_config()["device"] == "cpu"  # the server forwards a non-default device
    assert node_data.NODE_LOCAL_KEYS["device"] == "device"
    msg = fl_clientapp.Message(fm.make_recorddict(config=settings.client_config()), dst_node_id=1,
                               message_type=fm.MSG_QUERY, group_id="1")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "device": "auto"}, state=RecordDict(),
                  run_config={})
    got, _ = node_data.settings_from(msg, ctx)
    assert got.device == "auto"
    bad = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "device": "gpu0"}, state=RecordDict(),
                  run_config={})
    with pytest.raises(RunConfigError, match="run config 'device'"):
        node_data.settings_from(msg, bad)


def test_simulation_shares_gpus_through_ray_resources():
    plain = dict(x.split("=", 1) for x in LocalFederation(num_supernodes=4).federation_config())
    assert plain["client-resources-num-gpus"] == "0.0" and plain["init-args-num-gpus"] == "0"
    shared = dict(x.split("=", 1) for x in LocalFederation(num_supernodes=4, num_gpus_per_client=0.25)
                  .federation_config())
    assert shared["client-resources-num-gpus"] == "0.25" and "init-args-num-gpus" not in shared
    with pytest.raises(ValueError, match="needs num_gpus_per_client > 0"):
        SimulationConfig(run=FLSettings(device="cuda"))
    assert SimulationConfig(run=FLSettings(device="cuda"), num_gpus_per_client=0.5).num_gpus_per_client == 0.5


@pytest.mark.parametrize("argv", [
    ["cloud", "serve", "--model", "tiny-large", "--insecure", "--port", "0"],
    ["simulate", "--engine", "loopback", "--rounds", "1"],
    ["generate", "--variant", "device", "--data", "nowhere.jsonl", "--user", "u"],
    ["eval", "--dataset", "nowhere.jsonl", "--json", "out.json", "--variants", "device"],
    ["demo", "--quick"],
])
def test_every_command_refuses_a_malformed_device_flag(argv, capsys):
    from fedcogen.cli import main

    try:
        rc = main([*argv, "--device", "gpu0"])  # run settings are checked by FLSettings
    except SystemExit as exc:  # the other commands' flag by argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "'gpu0'" in err and "auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps" in err


@pytest.mark.skipif(not NO_CUDA, reason="this test is about a machine without CUDA")
def test_cloud_and_simulation_on_a_missing_gpu_fail_with_one_line(capsys, tmp_path):
    from fedcogen.cli import main

    assert main(["cloud", "serve", "--model", "tiny-large", "--insecure", "--port", "0", "--device", "cuda"]) == 2
    assert "device 'cuda' asked for, but" in capsys.readouterr().err
    assert main(["simulate", "--engine", "loopback", "--device", "cuda:0", "--rounds", "1",
                 "--out-dir", str(tmp_path / "run")]) == 2
    assert "device 'cuda:0' asked for, but" in capsys.readouterr().err
    assert main(["simulate", "--device", "cuda", "--out-dir", str(tmp_path / "run")]) == 2
    assert "needs num_gpus_per_client > 0" in capsys.readouterr().err


def test_half_precision_base_trains_fp32_adapter_and_serves(monkeypatch):
    """The GPU dtype path on the CPU: a bf16 base (what `cuda` loads) with fp32 master adapter weights trains,
    and the cloud scheduler serves a bf16 model (KV buffers in its dtype, fp32 log-probs back)."""
    from fedcogen import models
    from fedcogen.accelerator import Placement
    from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
    from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

    monkeypatch.setattr(models, "placement", lambda setting="auto": Placement(torch.device("cpu"), torch.bfloat16))
    seed = 9173  # a seed no other test uses: the bf16 copy stays out of their cached models
    lm = lora_model("tiny", seed, LoraSpec(r=2, alpha=4, dropout=0.0), device="cpu")
    base = next(p for n, p in lm.model.named_parameters() if "lora_" not in n)
    assert base.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.requires_grad for p in lm.params.values())
    data = encode_examples(lm.tokenizer, [("say hi", "hi there"), ("say bye", "bye now")], max_seq_len=64)
    before = get_adapter(lm)
    result = train_local(lm, data, steps=2, batch_size=2, lr=1e-2, seed=0)
    assert result.loss == result.loss and any((get_adapter(lm)[k] != before[k]).any() for k in before)

    cloud_lm = load_model("tiny-large", seed=seed)
    assert next(cloud_lm.model.parameters()).dtype == torch.bfloat16
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True), lm=cloud_lm)
    dev = CogenDevice(DeviceConfig(device_model="tiny", cloud=srv.address, insecure=True, max_new_tokens=3),
                      device_lm=load_model("tiny", seed=seed))
    try:
        answer = dev.generate("Write a note.", "I am Zed.", "logit")
        assert answer.tokens == 3 and answer.cloud_calls == 3 and not answer.fell_back
    finally:
        dev.close()
        srv.stop(grace=1)


def test_gpu_share_splits_one_gpu_among_a_rounds_clients_only_on_cuda(monkeypatch):
    assert accelerator.gpu_share("cpu", 4) == 0.0
    if NO_CUDA:
        assert accelerator.gpu_share("auto", 4) == 0.0
    monkeypatch.setattr(accelerator, "resolve_device", lambda setting: torch.device("cuda", 0))
    assert accelerator.gpu_share("cuda", 4) == 0.25 and accelerator.gpu_share("cuda", 0) == 1.0
    assert accelerator.Placement(torch.device("cuda", 1), torch.bfloat16).key == "cuda:1"
