import subprocess
import sys
import warnings

import pytest

from finetune_sdk import ConfigError, JobSpec
from finetune_sdk.spec import DataRef
from tests.conftest import COUNSEL


def _spec(**kw):
    data = DataRef(train_path="/d/train.jsonl", fingerprint="sha256:x", train_rows=3)
    return JobSpec(model="smollm2-135m-instruct", template=COUNSEL.to_dict(), data=data, output_dir="/o", **kw)


def test_spec_round_trips_exactly_through_json():
    spec = _spec(seed=7, method="full")
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()


def test_unknown_keys_in_a_spec_file_warn_instead_of_failing():
    """A spec written by another SDK version still loads, without the keys this version does not know."""
    text = (_spec().to_json().replace('"seed": 0', '"seed": 0, "future_knob": 1')
            .replace('"epochs": 2.0', '"epochs": 2.0, "future_lr_knob": 3'))
    with pytest.warns(UserWarning) as caught:
        spec = JobSpec.from_json(text)
    assert [str(w.message).split(" (")[0] for w in caught] == [
        "JobSpec: ignoring unknown keys ['future_knob']", "TrainingSettings: ignoring unknown keys ['future_lr_knob']"]
    assert spec == _spec()


def test_invalid_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid job spec"):
        JobSpec.from_json('{"model": "x"}')


def test_import_does_not_pull_torch():
    code = "import sys, finetune_sdk; print(sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_import_does_not_pull_the_server_stack():
    """Services that only call endpoints need neither fastapi nor uvicorn, even with the HTTP Predictor."""
    code = ("import sys, finetune_sdk, finetune_sdk.predict.http, finetune_sdk.deployers.local; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
