"""Structured report (issue 8): sections from a real analysed phantom study, all four formats
through the service route, the grounding checker, and the LLM writer's fallbacks.

The tests against the real llama.cpp server are in ``tests/test_report_llm.py``.
"""

from __future__ import annotations

import copy
import http.server
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from cerebrascan.report import findings as sections
from cerebrascan.report.builder import build_report
from cerebrascan.report.facts import fmt_ml, report_facts
from cerebrascan.report.grounding import check_sections, extract_claims
from cerebrascan.report.render import to_html, to_markdown, to_pdf
from cerebrascan.report.settings import ReportSettings
from schemas.report import OverlayImage, StudyReport

NO_IMAGE = OverlayImage(shown=False, reason="not drawn in this test")


@pytest.fixture(scope="module")
def findings(reported_study: dict) -> dict:
    return reported_study


@pytest.fixture(scope="module")
def template_report(findings: dict) -> StudyReport:
    return build_report(findings, NO_IMAGE, ReportSettings())


def _with_generic_analyzers(findings: dict) -> dict:
    """Findings plus classification / radiogenomics / delta results of a plausible shape.

    Those analyzers are written by other issues; the report reads them generically.
    """
    planted = copy.deepcopy(findings)
    planted["analyzers"]["classification"] = {
        "name": "classification",
        "version": "0.1.0",
        "plugin": "test",
        "status": "ok",
        "duration_ms": 1.0,
        "result": {"label": "glioblastoma", "confidence": 0.83, "research_use_only": True},
    }
    planted["analyzers"]["radiogenomics"] = {
        "name": "radiogenomics",
        "version": "0.1.0",
        "plugin": "test",
        "status": "ok",
        "duration_ms": 1.0,
        "result": {
            "markers": [
                {"marker": "IDH", "prediction": "wildtype", "probability": 0.71},
                {"marker": "MGMT", "prediction": "methylated", "probability": 0.58},
            ]
        },
    }
    planted["analyzers"]["delta"] = {
        "name": "delta",
        "version": "0.1.0",
        "plugin": "test",
        "status": "error",
        "duration_ms": 1.0,
        "error": "no prior study of this patient",
    }
    return planted


# ---- sections and formats through the service ------------------------------------------------


@pytest.mark.parametrize("report_format", ["json", "md", "html", "pdf"])
def test_every_format_renders_the_stored_findings(
    asgi_client, findings: dict, report_format: str
) -> None:
    response = asgi_client.get(
        f"/studies/{findings['study_id']}/report", params={"format": report_format}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-report-writer"] == "template"
    wt = fmt_ml(findings["volumes_ml"]["WT"])
    et = fmt_ml(findings["volumes_ml"]["ET"])
    if report_format == "json":
        report = StudyReport.model_validate(response.json())
        assert report.technique.study_id == findings["study_id"]
        assert report.technique.model_version == findings["model"]["version"]
        assert set(report.technique.analyzer_versions) >= {"volumetrics", "nogo", "hotspot"}
        assert {s.code: s.volume_ml for s in report.findings.sub_regions} == findings["volumes_ml"]
        hotspot = findings["analyzers"]["hotspot"]["result"]["targets"]
        assert [t.rank for t in report.biopsy_targets.targets] == [t["rank"] for t in hotspot]
        assert report.structures_at_risk.status.available
        if "classification" not in findings["analyzers"]:
            assert not report.classification.status.available
            assert "not installed or not run" in report.classification.status.reason
        assert report.overlay.shown and report.overlay.url.endswith("/report/overlay.png")
        return
    if report_format == "pdf":
        import pypdfium2 as pdfium

        assert response.headers["content-type"] == "application/pdf"
        document = pdfium.PdfDocument(response.content)
        text = "".join(page.get_textpage().get_text_range() for page in document)
        assert "Research use only" in text
        assert wt in text and et in text
        assert "Biopsy targets" in text and "No-go structures at risk" in text
        page = np.asarray(document[0].render(scale=0.5).to_pil().convert("RGB"))
        colours = {tuple(int(c) for c in px) for px in page.reshape(-1, 3)[::7]}
        assert (255, 225, 25) in colours or any(
            r > 200 and g > 200 and b < 60 for r, g, b in colours
        ), "the key image with the ET colour is on the first page"
        return
    text = response.text
    assert "Research use only" in text
    for heading in (
        "Study and technique",
        "Findings",
        "Classification",
        "Radiogenomics",
        "Biopsy targets",
        "No-go structures at risk",
        "Change since prior studies",
        "Quality",
        "Impression",
    ):
        assert heading in text
    assert wt in text and et in text
    if "delta" not in findings["analyzers"]:
        assert "Not available: delta analyzer not installed or not run" in text
    if report_format == "html":
        assert "data:image/png;base64," in text
    else:
        assert f"/studies/{findings['study_id']}/report/overlay.png" in text


def test_overlay_png_shows_the_slice_with_the_largest_tumour_area(
    asgi_client, findings: dict
) -> None:
    study = findings["study_id"]
    report = asgi_client.get(f"/studies/{study}/report").json()
    response = asgi_client.get(report["overlay"]["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    segmentation = asgi_client.get(findings["segmentation_url"]).content
    import gzip

    import nibabel as nib

    labels = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(segmentation)).dataobj)
    axis = report["overlay"]["slice_axis"]
    per_slice = np.count_nonzero(labels > 0, axis=tuple(a for a in range(3) if a != axis))
    assert report["overlay"]["slice_index"] == int(np.argmax(per_slice))
    assert image.shape[:2] == (2 * labels.shape[1], 2 * labels.shape[0])  # axial, upscaled 2x
    if report["overlay"]["background"] == "labels":
        # Labels alone: every tumour voxel of the slice is a coloured 2x2 block on black.
        assert np.any(image != 0, axis=2).sum() == 4 * per_slice.max()
        assert "no image volume" in report["overlay"]["reason"]


@pytest.mark.parametrize(
    ("path", "status", "named"),
    [
        ("/studies/{study}/report?format=docx", 400, "'docx'"),
        ("/studies/{study}/report?writer=gpt", 400, "'gpt'"),
        ("/studies/0123456789abcdef0123456789abcdef/report", 404, "0123456789abcdef"),
        ("/studies/not-a-study/report", 400, "'not-a-study'"),
        ("/studies/0123456789abcdef0123456789abcdef/report/overlay.png", 404, "0123456789abcdef"),
    ],
)
def test_bad_report_requests_get_4xx_naming_the_value(
    asgi_client, findings: dict, path: str, status: int, named: str
) -> None:
    response = asgi_client.get(path.format(study=findings["study_id"]))
    assert response.status_code == status
    assert named in response.json()["error"]


def test_llm_writer_without_endpoint_falls_back_and_says_why(asgi_client, findings: dict) -> None:
    response = asgi_client.get(f"/studies/{findings['study_id']}/report?writer=llm")
    assert response.status_code == 200
    writer = response.json()["writer"]
    assert (writer["requested"], writer["used"]) == ("llm", "template")
    assert writer["fallback_code"] == "no_endpoint"
    assert "no LLM endpoint configured" in writer["fallback_reason"]


def test_only_roles_in_the_setting_may_ask_for_the_llm(asgi_client, findings: dict) -> None:
    """The served app behind an enabled key check: a reader's ``writer=llm`` is refused (the
    service's ``report.writer`` is template, ``report.llm_override_roles`` the default), an
    admin's is served (it falls back here: no endpoint); the template is anyone's."""
    from starlette.testclient import TestClient

    from cerebrascan.serving.apikeys import new_key
    from cerebrascan.serving.http.auth import ApiKeyMiddleware
    from cerebrascan.serving.settings import AuthSettings

    reader_key, reader = new_key("report-reader", "reader")
    admin_key, admin = new_key("report-admin", "admin")
    client = TestClient(
        ApiKeyMiddleware(asgi_client.app, AuthSettings(enabled=True, api_keys=[reader, admin]))
    )
    url = f"/studies/{findings['study_id']}/report"
    as_reader = {"Authorization": f"Bearer {reader_key}"}
    refused = client.get(f"{url}?writer=llm", headers=as_reader)
    assert refused.status_code == 403
    assert "'reader'" in refused.json()["error"]
    assert "report.llm_override_roles ['admin']" in refused.json()["error"]
    for query in ("", "?writer=template"):
        allowed = client.get(f"{url}{query}", headers=as_reader)
        assert allowed.status_code == 200
        assert allowed.headers["X-Report-Writer"] == "template"
    by_admin = client.get(f"{url}?writer=llm", headers={"X-API-Key": admin_key})
    assert by_admin.status_code == 200
    assert by_admin.json()["writer"]["requested"] == "llm"


def test_override_policy_settings(monkeypatch) -> None:
    from cerebrascan.settings import Settings

    assert not ReportSettings(llm_override_roles=[]).may_override("llm", "admin")
    assert ReportSettings(writer="llm").may_override("llm", "reader")
    assert ReportSettings(writer="llm").may_override("template", None)
    assert not ReportSettings().may_override("llm", None)
    assert not ReportSettings(llm_override_roles=[]).keeps_supplied_text()
    monkeypatch.setenv("CEREBRASCAN_REPORT__LLM_OVERRIDE_ROLES", '["reader", "admin"]')
    assert Settings().report.may_override("llm", "reader")
    with pytest.raises(ValueError, match="'owner'"):
        ReportSettings(llm_override_roles=["owner"])


def test_generic_sections_show_predictions_with_confidence_and_research_notice(
    findings: dict,
) -> None:
    report = build_report(_with_generic_analyzers(findings), NO_IMAGE, ReportSettings())
    assert [(p.value, p.confidence) for p in report.classification.predictions] == [
        ("glioblastoma", 0.83)
    ]
    assert [(p.name, p.value) for p in report.radiogenomics.predictions] == [
        ("IDH", "wildtype"),
        ("MGMT", "methylated"),
    ]
    assert not report.change.status.available
    assert "no prior study" in report.change.status.reason
    markdown = to_markdown(report)
    assert "glioblastoma** (confidence 83%)" in markdown
    assert "Classification (research use only)" in markdown
    assert "research use only" in report.narrative.impression.lower()
    assert check_sections(report.narrative.model_dump(), report_facts(report)).grounded


def test_an_old_study_without_analyzers_still_reports(findings: dict) -> None:
    old = {k: v for k, v in findings.items() if k != "analyzers"}
    report = build_report(old, NO_IMAGE, ReportSettings())
    assert not report.findings.location_status.available
    assert not report.biopsy_targets.status.available
    assert "whole-tumour volume of " + fmt_ml(findings["volumes_ml"]["WT"]) in (
        report.narrative.findings
    )
    assert to_pdf(report, None).startswith(b"%PDF")


def test_html_escapes_text_from_the_findings(findings: dict) -> None:
    planted = copy.deepcopy(findings)
    planted["analyzers"]["quality"]["result"]["flags"].append(
        {"code": "x", "severity": "warning", "message": "<script>alert(1)</script>"}
    )
    html = to_html(build_report(planted, NO_IMAGE, ReportSettings()), None)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# ---- grounding ---------------------------------------------------------------------------------


def test_template_narrative_is_grounded(template_report: StudyReport) -> None:
    result = check_sections(template_report.narrative.model_dump(), report_facts(template_report))
    assert result.grounded, result.mismatches
    assert result.claims_checked > 10


def _side(report: StudyReport) -> str:
    assert report.findings.hemisphere in ("left", "right")
    return report.findings.hemisphere


def test_a_faithful_rephrasing_is_accepted(template_report: StudyReport) -> None:
    volumes = {s.code: s.volume_ml for s in template_report.findings.sub_regions}
    side = _side(template_report)
    section = {
        "findings": f"A {side}-sided mass measures {volumes['WT']:.1f} mL overall, of which "
        f"{volumes['ET']:.1f} ml enhances.",
        "impression": f"{side.capitalize()} hemispheric tumour, {volumes['WT']:.1f} mL.",
    }
    assert check_sections(section, report_facts(template_report)).grounded


@pytest.mark.parametrize(
    ("make_text", "kind"),
    [
        (lambda v, side: f"The tumour measures {v['WT'] + 1.0:.1f} mL.", "number"),
        (lambda v, side: f"The tumour measures {round(v['WT'])} mL.", "number"),
        (lambda v, side: f"The tumour measures {v['WT']:.1f} mm.", "number"),
        (lambda v, side: f"The tumour measures {v['WT']:.1f} cm.", "number"),
        (lambda v, side: f"There are seven lesions of {v['WT']:.1f} mL.", "number"),
        (
            lambda v, side: (
                f"A {'left' if side == 'right' else 'right'} tumour of {v['WT']:.1f} mL."
            ),
            "side",
        ),
        (lambda v, side: "It extends into the cerebellum.", "location"),
        (lambda v, side: "Findings are consistent with a benign meningioma.", "category"),
        (lambda v, side: "IDH-mutant, MGMT unmethylated.", "category"),
        (lambda v, side: "Progression since 2025-01-01.", "date"),
    ],
)
def test_a_contradicting_section_is_rejected(
    template_report: StudyReport, make_text, kind: str
) -> None:
    volumes = {s.code: s.volume_ml for s in template_report.findings.sub_regions}
    text = make_text(volumes, _side(template_report))
    result = check_sections(
        {"findings": template_report.narrative.findings, "impression": text},
        report_facts(template_report),
    )
    assert not result.grounded
    assert kind in {m.kind for m in result.mismatches}
    assert all(m.section == "impression" for m in result.mismatches)


def test_extractor_ignores_digits_inside_sequence_names() -> None:
    claims = extract_claims("T1c, T2w and T2-FLAIR 3D images in SRI24 space; 12.5 mL")
    assert [(c.value, c.unit) for c in claims if c.kind == "number"] == [(12.5, "mL")]


def test_supplied_text_is_read_from_stored_input_fields(findings: dict) -> None:
    planted = dict(findings, metadata={"StudyDescription": "MR BRAIN W/WO"})
    assert sections.supplied_text(planted) == {"metadata.StudyDescription": "MR BRAIN W/WO"}


# ---- LLM writer fallbacks (the real server is in test_report_llm.py) ---------------------------


class _EndpointDouble(http.server.BaseHTTPRequestHandler):
    """A local OpenAI-style endpoint that is slow, dribbles, or answers garbage.

    A test double: a real model cannot be made to time out, send its answer a byte at a time,
    answer HTTP 500 or break its JSON grammar on demand.
    """

    delay_s = 0.0
    content = "{}"
    status = 200
    raw: bytes | None = None
    """The whole body when set (else a chat-completions object around ``content``)."""
    dribble_s = 0.0
    """When set, the body goes out one byte per ``dribble_s`` seconds."""
    seen_headers: ClassVar[list[dict[str, str]]] = []
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        cls = type(self)
        cls.seen_headers.append(dict(self.headers))
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            time.sleep(self.delay_s)
            body = self.raw
            if body is None:
                body = json.dumps({"choices": [{"message": {"content": self.content}}]}).encode()
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.dribble_s:
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(self.dribble_s)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout tests)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def endpoint_double() -> Iterator[tuple[str, type[_EndpointDouble]]]:
    handler = type("Handler", (_EndpointDouble,), {"seen_headers": [], "lock": threading.Lock()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def _llm_settings(base_url: str, **extra: object) -> ReportSettings:
    values: dict[str, object] = {"llm_timeout_s": 1.0, **extra}
    return ReportSettings(writer="llm", llm_base_url=base_url, llm_model="double", **values)


def test_timeout_falls_back_to_the_template(findings: dict, template_report, endpoint_double):
    base_url, handler = endpoint_double
    handler.delay_s = 3.0
    started = time.perf_counter()
    report = build_report(findings, NO_IMAGE, _llm_settings(base_url))
    assert time.perf_counter() - started < handler.delay_s
    assert (report.writer.used, report.writer.fallback_code) == ("template", "timeout")
    assert report.narrative == template_report.narrative


def test_the_deadline_covers_the_whole_request(findings: dict, endpoint_double) -> None:
    """An answer that arrives a byte every 0.2 s never trips a per-read timeout of 1 s; the
    deadline of 1 s for the whole request ends it."""
    base_url, handler = endpoint_double
    handler.dribble_s = 0.2
    started = time.perf_counter()
    report = build_report(findings, NO_IMAGE, _llm_settings(base_url))
    elapsed = time.perf_counter() - started
    assert report.writer.fallback_code == "timeout"
    assert elapsed < 2.0, f"the LLM call took {elapsed:.1f} s with a 1 s deadline"


def test_llm_calls_in_flight_are_limited(findings: dict, endpoint_double) -> None:
    base_url, handler = endpoint_double
    handler.delay_s = 0.3
    handler.content = "{}"
    settings = _llm_settings(base_url, llm_max_concurrent=3, llm_timeout_s=10.0)
    threads = [
        threading.Thread(target=build_report, args=(findings, NO_IMAGE, settings)) for _ in range(7)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(handler.seen_headers) == 7
    assert handler.most_in_flight == 3


def test_no_free_slot_before_the_deadline_falls_back_as_busy(findings: dict) -> None:
    from cerebrascan.report.llm_writer import llm_slots

    slots = llm_slots(1)
    assert slots.acquire(timeout=5)  # the one slot is taken by another report
    try:
        started = time.perf_counter()
        settings = _llm_settings("http://127.0.0.1:9/v1", llm_max_concurrent=1, llm_timeout_s=0.3)
        report = build_report(findings, NO_IMAGE, settings)
    finally:
        slots.release()
    assert report.writer.fallback_code == "busy"
    assert 0.25 < time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ('{"findings": "unterminated', "invalid_json"),
        ('{"findings": "x"}', "schema_mismatch"),
        ("[1, 2]", "schema_mismatch"),
        ('{"findings": 3, "impression": ""}', "schema_mismatch"),
    ],
)
def test_invalid_json_falls_back_to_the_template(
    findings: dict, template_report, endpoint_double, content: str, code: str
) -> None:
    base_url, handler = endpoint_double
    handler.content = content
    report = build_report(findings, NO_IMAGE, _llm_settings(base_url, llm_api_key="s3cret-key"))
    assert (report.writer.used, report.writer.fallback_code) == ("template", code)
    assert report.writer.reply_chars and report.writer.http_status == 200
    assert report.narrative == template_report.narrative
    assert handler.seen_headers[-1]["Authorization"] == "Bearer s3cret-key"


MARKER = "QXZ-ENDPOINT-WORDS"
PLANTED_VOLUME_RE = re.compile(r"(?<![\d.])999(?!\d)")
"""999 as a number of its own (not the digits of 0.0999 or 1.9997)."""
ENDPOINT_FAULTS = [
    pytest.param({"status": 500, "raw": f"internal error: {MARKER}".encode()}, "http_error"),
    pytest.param({"raw": json.dumps({"error": MARKER}).encode()}, "not_chat_completion"),
    pytest.param({"content": f'{{"findings": "{MARKER}'}, "invalid_json"),
    pytest.param(
        {"content": json.dumps({MARKER: "x", "findings": MARKER, "impression": MARKER})},
        "schema_mismatch",
    ),
    pytest.param(
        {
            "content": json.dumps(
                {
                    "findings": f"{MARKER}: a benign tumour of 999 mL in the cerebellum.",
                    "impression": f"{MARKER} benign, 999 mL, no enhancement.",
                }
            )
        },
        "grounding",
    ),
]


@pytest.mark.parametrize(("fault", "code"), ENDPOINT_FAULTS)
def test_the_endpoint_text_never_reaches_a_report_a_log_or_the_store(
    findings: dict, endpoint_double, caplog, fault: dict, code: str
) -> None:
    """Whatever the endpoint answers, the report (every format), the log and the study's
    folder hold a fallback code, our own words and lengths, never its text."""
    from cerebrascan.report.study_reports import StudyReports, render_bytes
    from cerebrascan.settings import Settings
    from cerebrascan.store.artefacts import StudyArtefacts

    base_url, handler = endpoint_double
    for name, value in fault.items():
        setattr(handler, name, value)
    store = StudyArtefacts(Settings().studies_dir)
    caplog.set_level("DEBUG")
    report, png = StudyReports(store, _llm_settings(base_url)).build(findings["study_id"])
    assert (report.writer.used, report.writer.fallback_code) == ("template", code)
    assert report.writer.reply_chars
    rendered = [render_bytes(report, png, fmt) for fmt in ("json", "md", "html")]  # type: ignore[arg-type]
    pdf = render_bytes(report, png, "pdf")
    import pypdfium2 as pdfium

    pdf_text = "".join(p.get_textpage().get_text_range() for p in pdfium.PdfDocument(pdf))
    for text in [*(r.decode() for r in rendered), pdf_text, caplog.text]:
        assert MARKER not in text
        assert not PLANTED_VOLUME_RE.search(text)
    assert f"fell back to the template: {report.writer.fallback_reason}" in caplog.text or (
        f"refused: {report.writer.fallback_reason}" in caplog.text
    )
    for path in store.folder(findings["study_id"]).iterdir():
        assert MARKER.encode() not in path.read_bytes()


def test_grounded_answer_from_an_endpoint_is_used(findings, template_report, endpoint_double):
    base_url, handler = endpoint_double
    wt = fmt_ml(findings["volumes_ml"]["WT"])
    handler.content = json.dumps(
        {"findings": f"Whole tumour {wt}.", "impression": f"Tumour of {wt}; research use only."}
    )
    report = build_report(findings, NO_IMAGE, _llm_settings(base_url))
    assert report.writer.used == "llm"
    assert report.writer.fallback_code is None
    assert report.narrative.findings == f"Whole tumour {wt}."
    assert "LLM" in to_markdown(report)


@pytest.mark.parametrize(
    "opening",
    ["[{}] (the findings; the only source you may use: ", "FACTS: ", '{"findings": "'],
)
def test_a_narrative_echoing_the_prompt_is_refused(template_report, opening: str) -> None:
    """SmolLM2-135M wrote such grounded non-narratives in the acceptance benchmark."""
    from cerebrascan.report import llm_writer
    from schemas.report import WriterRecord

    impression = template_report.narrative.impression
    sections = llm_writer.LlmSections(findings=opening + impression, impression=impression)
    record = WriterRecord(requested="llm", used="llm")
    assert not llm_writer.judge(sections, template_report, record)
    assert (record.used, record.fallback_code) == ("template", "prompt_echo")
    clean = llm_writer.LlmSections(findings=impression, impression=impression)
    assert llm_writer.judge(clean, template_report, WriterRecord(requested="llm", used="llm"))


def test_unreachable_endpoint_falls_back(findings: dict) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the request: nothing listens
    report = build_report(findings, NO_IMAGE, _llm_settings(f"http://127.0.0.1:{port}/v1"))
    assert (report.writer.used, report.writer.fallback_code) == ("template", "unreachable")
    assert "unreachable" in report.writer.fallback_reason


def test_api_key_is_masked_in_settings(monkeypatch) -> None:
    from cerebrascan.settings import Settings

    monkeypatch.setenv("CEREBRASCAN_REPORT__LLM_API_KEY", "very-secret-token")
    monkeypatch.setenv("CEREBRASCAN_REPORT__WRITER", "llm")
    settings = Settings()
    assert settings.report.writer == "llm"
    assert settings.report.llm_api_key.get_secret_value() == "very-secret-token"
    assert "very-secret-token" not in json.dumps(settings.masked())


def test_bad_endpoint_url_is_refused() -> None:
    with pytest.raises(ValueError, match="'ftp://x'"):
        ReportSettings(llm_base_url="ftp://x")


def test_reading_the_findings_does_no_model_calls(findings: dict, tmp_path: Path) -> None:
    """The template path never touches the network: a bogus endpoint URL is not contacted."""
    settings = ReportSettings(llm_base_url="http://192.0.2.1:9/v1", llm_timeout_s=0.1)
    report = build_report(findings, NO_IMAGE, settings)
    assert report.writer.requested == report.writer.used == "template"


def test_html_and_pdf_reports_carry_the_montage(asgi_client, findings: dict) -> None:
    """The HTML embeds the key image and an axial montage (decoded: wider than the key image,
    with the ET colour); the PDF carries both pictures as image objects."""
    import base64

    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c
    from PIL import Image

    study_id = findings["study_id"]
    html = asgi_client.get(f"/studies/{study_id}/report", params={"format": "html"}).text
    sources = re.findall(r'<img class="(key|montage)" src="data:image/png;base64,([^"]+)"', html)
    assert [kind for kind, _ in sources] == ["key", "montage"]
    montage = np.asarray(Image.open(io.BytesIO(base64.b64decode(sources[1][1]))).convert("RGB"))
    key = Image.open(io.BytesIO(base64.b64decode(sources[0][1])))
    assert montage.shape[1] > key.width
    yellow = (montage[..., 0] > 200) & (montage[..., 1] > 180) & (montage[..., 2] < 90)
    assert yellow.sum() > 100, "the montage shows the enhancing tumour in the palette's yellow"
    assert "Axial montage" in html

    pdf = asgi_client.get(f"/studies/{study_id}/report", params={"format": "pdf"}).content
    document = pdfium.PdfDocument(pdf)
    images = sum(
        1 for page in document for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,))
    )
    assert images == 2
