"""Settings of cohort runs on Ray (``cohorts`` section; ``docs/cohorts.md``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CohortSettings(BaseModel):
    """How ``cerebrascan cohort run`` uses Ray, and where the service submits cohorts."""

    model_config = {"extra": "forbid"}

    ray_address: str = Field(
        default="local",
        description="Ray cluster of `cohort run`: 'local' starts one in-process, 'auto' joins "
        "the cluster this machine belongs to, or ray://host:10001.",
    )
    actors: int = Field(default=1, ge=1, description="Most model actors (the pool's max size).")
    min_actors: int | None = Field(
        default=None,
        ge=1,
        description="Fewest model actors (the pool's min size); None: as many as actors (a "
        "fixed pool, all started at once).",
    )
    gpus_per_actor: float = Field(
        default=0.0, ge=0, description="GPUs each model actor reserves (0: CPU runner)."
    )
    cpus_per_actor: float = Field(
        default=1.0, gt=0, description="CPUs each model actor reserves (Ray's logical CPUs)."
    )
    split_at_runner: bool | None = Field(
        default=None,
        description="Run the network and the analysis (postprocess, analyzers, store) in "
        "separate actor pools; None: only when the model actors have GPUs.",
    )
    analysis_actors: int = Field(
        default=1,
        ge=1,
        description="Analysis actors (postprocess, analyzers, store; CPU only): the model "
        "actors only run the network.",
    )
    cpus_per_analysis_actor: float = Field(
        default=1.0, gt=0, description="CPUs each analysis actor reserves."
    )
    cpus_per_task: float = Field(
        default=1.0,
        gt=0,
        description="CPUs each fetch/preprocess and write task reserves (as many as a model "
        "actor: Ray then fuses fetch/preprocess into the actor on a run without GPUs).",
    )
    local_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs of a 'local' Ray; None: this machine's, or as many as the "
        "actors and one task reserve if that is more.",
    )
    object_store_mb: int = Field(
        default=512, ge=100, description="Object store of a 'local' Ray, in MB."
    )
    study_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="A study taking longer in the actors (network, then analysis) becomes a "
        "failed row.",
    )
    max_errored_blocks: int = Field(
        default=-1,
        description="Ray Data blocks that may fail before the run stops (-1: no limit); a "
        "study's own failure is a row, not an errored block.",
    )
    job_submission_url: str | None = Field(
        default=None,
        description="Ray job-submission (dashboard) URL the service sends POST /cohorts to, "
        "e.g. http://raycluster-head-svc:8265; None: POST /cohorts answers 503.",
    )

    @property
    def splits(self) -> bool:
        """The network and the analysis run in separate actor pools."""
        if self.split_at_runner is None:
            return self.gpus_per_actor > 0
        return self.split_at_runner

    @property
    def reserved_cpus(self) -> float:
        """Ray CPUs a run needs at least: every actor, and one task beside them."""
        analysis = self.analysis_actors * self.cpus_per_analysis_actor if self.splits else 0.0
        return self.actors * self.cpus_per_actor + analysis + self.cpus_per_task
