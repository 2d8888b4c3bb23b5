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
    local_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of a 'local' Ray; None: all of this machine's."
    )
    object_store_mb: int = Field(
        default=512, ge=100, description="Object store of a 'local' Ray, in MB."
    )
    study_timeout_s: float = Field(
        default=900.0, gt=0, description="A study taking longer in its actor becomes a failed row."
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
