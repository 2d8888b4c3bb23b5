"""Settings of the PACS integration (``pacs``): the DICOM receiver and the send targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

AE_TITLE = r"^[ -~]{1,16}$"
"""An Application Entity title: 1 to 16 printable ASCII characters."""


class DicomWebTarget(BaseModel):
    """A DICOMweb server that accepts STOW-RS (``POST {url}/studies``)."""

    model_config = {"extra": "forbid"}

    kind: Literal["dicomweb"] = "dicomweb"
    url: str = Field(
        pattern=r"^https?://",
        description="DICOMweb root, e.g. http://orthanc:8042/dicom-web (STOW-RS at /studies).",
    )
    auth_header_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the whole Authorization header "
        "value (e.g. 'Bearer ...' or 'Basic ...'); the secret never sits in the settings.",
    )
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per request, in seconds.")


class DimseTarget(BaseModel):
    """A DICOM node that accepts C-STORE (a PACS's DIMSE port)."""

    model_config = {"extra": "forbid"}

    kind: Literal["dimse"] = "dimse"
    host: str = Field(min_length=1, description="Host name or address of the node.")
    port: int = Field(gt=0, lt=65536, description="Its DICOM port.")
    called_ae: str = Field(pattern=AE_TITLE, description="Its AE title (Called AE).")
    timeout_seconds: float = Field(
        default=60.0, gt=0, description="Association, DIMSE and network timeout, in seconds."
    )


SendTarget = Annotated[DicomWebTarget | DimseTarget, Field(discriminator="kind")]


class PacsSettings(BaseModel):
    """The DICOM receiver (``cerebrascan dicom-listen``) and where study results may be sent."""

    model_config = {"extra": "forbid"}

    ae_title: str = Field(
        default="CEREBRASCAN",
        pattern=AE_TITLE,
        description="Our AE title: the receiver's, and the Calling AE of C-STORE sends.",
    )
    listen_host: str = Field(
        default="127.0.0.1",
        description="Address the DICOM receiver binds (0.0.0.0 to accept other machines).",
    )
    listen_port: int = Field(
        default=11112, gt=0, lt=65536, description="TCP port of the DICOM receiver."
    )
    listen_quiet_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A received study is analysed once no file has arrived for it for this "
        "long, in seconds.",
    )
    listen_skull_stripped: bool = Field(
        default=False,
        description="Take received studies as skull-stripped (no brain extraction), as "
        "options.skull_stripped does for POST /analyze/dicom.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where the receiver keeps the instances of each study and its state; "
        "None: data_dir/pacs-spool.",
    )
    targets: dict[str, SendTarget] = Field(
        default_factory=dict,
        description="Send targets of POST /studies/{id}/dicom/send by name: {kind: dicomweb, "
        "url, auth_header_env} or {kind: dimse, host, port, called_ae}.",
    )
