"""FineTuner: one object from a dataset and a prompt template to a trained artifact and an endpoint.

    tuner = FineTuner("smollm2-135m-instruct", "counsel-sample", template, output_dir="runs/counsel")
    tuner.preview(2)              # what is trained, what is masked
    artifact = tuner.train()      # backend="local" by default; "sagemaker" is one argument away
    predictor = tuner.deploy()    # deployer="inprocess" by default
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from .artifact import Artifact
from .data import CleanReport, clean_rows, count_overlap, fingerprint, load_rows, split_indices, write_jsonl
from .errors import ArtifactError, ConfigError
from .models import DEFAULT_MODEL, check_local_model
from .registry import BACKENDS, DEPLOYERS, resolve
from .spec import DataRef, JobSpec, LoraSettings, TrainingSettings, settings, work_dir_for
from .template import PromptTemplate

if TYPE_CHECKING:
    from .backends.base import TrainingJob
    from .estimate import Estimate
    from .evaluate import Comparison, EvalReport
    from .predict import Predictor
    from .preview import Preview


EVAL_MAX_NEW_TOKENS = 64  # evaluate()'s and compare()'s reply budget unless given


class FineTuner:
    """Validates everything up front (columns, template, settings, model name), then delegates.

    Nothing is loaded or written until :meth:`train`; a bad column or setting fails here, in seconds.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        dataset: Any = "counsel-sample",
        template: PromptTemplate | None = None,
        *,
        output_dir: str | Path = "runs/finetune",
        backend: Any = "local",
        method: Literal["lora", "qlora", "full"] = "lora",
        lora: LoraSettings | dict[str, Any] | None = None,
        training: TrainingSettings | dict[str, Any] | None = None,
        eval_fraction: float = 0.1,
        stratify: str | None = None,
        seed: int = 0,
        max_length: int = 1024,
        truncation: Literal["prompt", "drop"] = "prompt",
        strict: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        if template is None:
            raise ConfigError("pass a template, e.g. PromptTemplate.chat(user='{question}', assistant='{answer}')")
        if not isinstance(template, PromptTemplate):
            raise ConfigError(f"template must be a PromptTemplate, got {type(template).__name__}")
        if method not in ("lora", "qlora", "full"):
            raise ConfigError(f"method={method!r}; use 'lora', 'qlora' or 'full'")
        check_local_model(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        if truncation not in ("prompt", "drop"):
            raise ConfigError(f"truncation={truncation!r}; use 'prompt' (cut the prompt, keep the completion) or 'drop'")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
            raise ConfigError(f"max_length={max_length!r}; use a whole number of tokens, at least 8")
        self.model = model
        self.template = template
        self.output_dir = Path(output_dir)
        self.backend = resolve(BACKENDS, backend, "backend")
        self.method = method
        self.lora = settings(LoraSettings, lora)
        self.training = settings(TrainingSettings, training)
        self.seed = seed
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.allow_pickle = allow_pickle
        self.max_length = max_length
        self.truncation = truncation
        if stratify is not None and stratify not in template.columns:
            raise ConfigError(f"stratify={stratify!r} is not a template column ({template.columns})")
        rows, self.clean_report = clean_rows(load_rows(dataset), template, strict=strict)
        train, evals = split_indices(rows, eval_fraction, seed, stratify)
        self.train_rows, self.eval_rows = [rows[i] for i in train], [rows[i] for i in evals]
        self._train_row_numbers = [self.clean_report.kept_rows[i] for i in train]  # for preview's messages
        count_overlap(self.train_rows, self.eval_rows, template, self.clean_report)
        self.job = None
        self._artifact: Artifact | None = None
        self._spec: JobSpec | None = None

    @property
    def report(self) -> CleanReport:
        return self.clean_report

    def spec(self) -> JobSpec:
        """The job spec this tuner would run (data files are written when training starts)."""
        work = work_dir_for(self.output_dir)
        data = DataRef(train_path=str((work / "data" / "train.jsonl").resolve()),
                       eval_path=str((work / "data" / "eval.jsonl").resolve()) if self.eval_rows else None,
                       fingerprint=fingerprint(self.train_rows + self.eval_rows),
                       train_rows=len(self.train_rows), eval_rows=len(self.eval_rows),
                       dropped_rows=self.clean_report.dropped)
        return JobSpec(model=self.model, revision=self.revision, trust_remote_code=self.trust_remote_code,
                       allow_pickle=self.allow_pickle, template=self.template.to_dict(), data=data,
                       method=self.method, lora=self.lora, training=self.training, max_length=self.max_length,
                       truncation=self.truncation, seed=self.seed, output_dir=str(self.output_dir.resolve()))

    def preview(self, n: int = 3, *, color: bool | None = None, file: Any = None) -> "Preview":
        """Render ``n`` training examples with trained vs masked tokens and lint them (prints them)."""
        from .preview import preview_rows

        numbers = self._train_row_numbers if len(self._train_row_numbers) == len(self.train_rows) else None
        return preview_rows(self.model, self.template, self.train_rows, n=n, color=color, file=file,
                            max_length=self.max_length, truncation=self.truncation,
                            trust_remote_code=self.trust_remote_code, row_numbers=numbers)

    def train(self, *, resume: bool = False, wait: bool = True) -> Artifact:
        """Write the data files, start the backend job and (by default) wait for the artifact."""
        from .train.preflight import preflight

        spec = self.spec()
        self.encode_stats = preflight(spec, self.train_rows)
        write_jsonl(self.train_rows, Path(spec.data.train_path))
        if spec.data.eval_path:
            write_jsonl(self.eval_rows, Path(spec.data.eval_path))
        self._spec = spec
        self.job = self.backend.create(spec, resume=resume)
        if not wait:
            return None  # type: ignore[return-value]
        self.job.wait()
        self._artifact = Artifact.load(self.output_dir)
        return self._artifact

    def jobs(self) -> list["TrainingJob"]:
        """Past and running jobs of this tuner's backend, newest first: locally the runs in the folder holding
        ``output_dir``; on SageMaker every finetune_sdk job in the region."""
        return self.backend.list_jobs(str(self.output_dir.resolve().parent))

    def attach(self, job_id: str) -> "TrainingJob":
        """Re-attach to a job by id (from :meth:`jobs`, or a SageMaker job name): ``tuner.job`` and
        ``tuner.artifact`` then follow it, so ``tuner.job.wait()`` and ``tuner.deploy()`` work as after train().
        A SageMaker job started elsewhere has no output folder here: its artifact comes into ``output_dir``."""
        self.job = self.backend.retrieve(job_id, output_dir=str(self.output_dir.resolve()))
        if self.job.output_dir:
            self.output_dir = Path(self.job.output_dir)
        self._artifact = None
        return self.job

    @property
    def artifact(self) -> Artifact:
        if self._artifact is None:
            try:
                self._artifact = Artifact.load(self.output_dir)
            except ArtifactError as exc:
                raise ArtifactError(f"no trained artifact yet at {self.output_dir}; call train() first") from exc
        return self._artifact

    def deploy(self, deployer: Any = "inprocess", **options: Any) -> "Predictor":
        """Serve the trained artifact and return a Predictor bound to it."""
        return resolve(DEPLOYERS, deployer, "deployer").deploy(self.artifact, **options)

    def estimate(self, where: str | None = None, *, throughput: Any = None, prices: Mapping[str, float] | None = None,
                 probe_steps: int = 6, serving_instance: str | None = None, requests_per_second: Any = None,
                 api_price_per_million: tuple[float, float] | None = None) -> "Estimate":
        """Tokens, steps, wall time and dollars of :meth:`train` before running it (see :mod:`finetune_sdk.estimate`).

        With no ``where`` it times ``probe_steps`` real steps here (about a minute on a CPU) and scales
        them to the whole run; ``where="ml.g5.xlarge"`` uses measured throughput and the price table.
        ``serving_instance`` adds the endpoint's cost per 1,000 requests, set against a hosted API's
        ``api_price_per_million=(input, output)`` USD.
        """
        from .estimate import estimate_job

        return estimate_job(self.spec(), self.train_rows, self.eval_rows, where=where, throughput=throughput,
                            prices=prices, probe_steps=probe_steps, serving_instance=serving_instance,
                            requests_per_second=requests_per_second, api_price_per_million=api_price_per_million)

    def evaluate(self, predictor_or_artifact: Any = None, dataset: Any = None, *, name: str | None = None,
                 metrics: Sequence[str] | None = None, label_column: str | None = "auto",
                 labels: Sequence[str] | None = None, batch_size: int = 8,
                 max_new_tokens: int = EVAL_MAX_NEW_TOKENS, **options: Any) -> "EvalReport":
        """Score a model on the held-out split (or ``dataset``) with this tuner's template.

        ``predictor_or_artifact`` is any Predictor (in-process, HTTP server, SageMaker), an Artifact or
        its directory (loaded here, closed after), ``"base"`` for the untuned base model, or None for
        this tuner's trained artifact. ``label_column="auto"`` scores labels when the completion's one
        column holds few, repeated values (like ``{topic}``); None turns label scoring off. ``labels`` adds
        labels to those the training rows hold.
        """
        rows, label_column, labels = self._eval_setup(dataset, label_column, labels)
        return self._evaluate(predictor_or_artifact, rows, name=name, metrics=metrics, label_column=label_column,
                              labels=labels, batch_size=batch_size, max_new_tokens=max_new_tokens, **options)

    def _evaluate(self, source: Any, rows: list[dict[str, Any]], *, name: str | None,
                  **options: Any) -> "EvalReport":
        """:meth:`evaluate` on rows whose label column and labels :meth:`_eval_setup` has settled."""
        from .evaluate import evaluate

        predictor, owned, default_name = self._predictor_for(source)
        try:
            return evaluate(predictor, rows, self.template, name=name or default_name, **options)
        finally:
            if owned:
                predictor.close()

    def compare(self, base: Any = "base", tuned: Any = None, dataset: Any = None, *,
                gate: Mapping[str, float] | None = None, **options: Any) -> "Comparison":
        """Evaluate ``base`` and ``tuned`` (see :meth:`evaluate`) on the same rows and put them side by side."""
        from .evaluate import check_gate, compare, expected_metrics

        rows, label_column, labels = self._eval_setup(dataset, options.pop("label_column", "auto"),
                                                      options.pop("labels", None))  # once, for both models
        if gate:  # a gate no report can meet fails before either model loads
            check_gate(gate, expected_metrics(rows, metrics=options.get("metrics"), label_column=label_column,
                                              labels=labels, embed=options.get("embed")))
        settled = {"name": None, "max_new_tokens": EVAL_MAX_NEW_TOKENS, **options,
                   "label_column": label_column, "labels": labels}
        return compare(self._evaluate(base, rows, **settled), self._evaluate(tuned, rows, **settled), gate=gate)

    def _eval_setup(self, dataset: Any, label_column: str | None,
                    labels: Sequence[str] | None) -> tuple[list[dict[str, Any]], str | None, list[str] | None]:
        """(rows, label column, labels) for :meth:`evaluate`: "auto" resolved, the training rows' labels added."""
        from .evaluate.run import auto_label_column, known_labels

        if dataset is None:
            if not self.eval_rows:
                raise ConfigError("this tuner has no held-out rows (eval_fraction=0); pass dataset= to evaluate on")
            rows = self.eval_rows
        else:
            rows, _ = clean_rows(load_rows(dataset), self.template)
        if label_column == "auto":
            label_column = auto_label_column(self.template, self.train_rows + rows)
        if not label_column:
            return rows, label_column, None
        return rows, label_column, known_labels(self.train_rows, label_column, labels or ())

    def _predictor_for(self, source: Any) -> tuple[Any, bool, str]:
        """(predictor, whether this call owns and must close it, a default report name)."""
        from .predict import Predictor

        if isinstance(source, str) and source == "base":
            return Predictor.base_model(self.model, self.template, revision=self.revision,
                                        trust_remote_code=self.trust_remote_code,
                                        allow_pickle=self.allow_pickle), True, "base"
        if hasattr(source, "predict_batch"):
            return source, False, "model"
        artifact = self.artifact if source is None else source
        return Predictor.local(artifact), True, "tuned"
