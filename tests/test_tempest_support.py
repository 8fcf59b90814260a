"""How the Tempest harness reads a run (tests/support/tempest.py): a subunit v2 stream made
here, shaped like Tempest's, in; per-test outcomes out. No server, no Tempest run."""

from __future__ import annotations

import io

from subunit import StreamResultToBytes

from tests.support.tempest import deployment_facts, excerpt, parse_subunit, reference_tests

CLS = "tempest.api.volume.test_x.XTest"


def stream(*events: tuple[str, str, str]) -> io.BytesIO:
    """(test id, final status, traceback or skip reason) → a subunit v2 byte stream."""
    out = io.BytesIO()
    writer = StreamResultToBytes(out)
    for test_id, status, text in events:
        writer.status(test_id=test_id, test_status="inprogress")
        name = "reason" if status == "skip" else "traceback"
        writer.status(test_id=test_id, file_name=name, file_bytes=text.encode(),
                      mime_type="text/plain; charset=utf8", eof=True)
        writer.status(test_id=test_id, test_status=status)
    out.seek(0)
    return out


def test_outcomes_by_plain_id_with_reasons() -> None:
    run = parse_subunit(stream(
        (f"{CLS}.test_a[id-1234,smoke]", "success", ""),
        (f"{CLS}.test_b[id-5678]", "fail", "Traceback...\nBadRequest: 400"),
        (f"{CLS}.test_c[id-9]", "skip", "Cinder backup is disabled"),
    ))
    assert run.outcomes[f"{CLS}.test_a"].status == "success"
    assert run.outcomes[f"{CLS}.test_b"].details.endswith("BadRequest: 400")
    assert run.outcome(f"{CLS}.test_c").details == "Cinder backup is disabled"  # type: ignore[union-attr]
    assert run.counts() == {"passed": 1, "failed": 1, "skipped": 1}


def test_a_class_whose_set_up_failed_fails_each_of_its_tests() -> None:
    run = parse_subunit(stream(
        (f"setUpClass ({CLS})", "fail", "OverLimit: Maximum number of volumes allowed (1)"),
        ("tearDownClass (tempest.api.volume.test_y.YTest)", "fail", "BadRequest"),
    ))
    outcome = run.outcome(f"{CLS}.test_never_ran")
    assert outcome is not None and outcome.status == "fail"
    assert "Maximum number of volumes" in outcome.details
    # a failed tear-down is reported, but it does not stand in for tests that ran
    assert run.outcome("tempest.api.volume.test_y.YTest.test_ran") is None
    assert run.class_counts() == {"passed": 0, "failed": 2, "skipped": 0}
    assert run.counts() == {"passed": 0, "failed": 0, "skipped": 0}


def test_excerpt_drops_the_test_framework_frames() -> None:
    traceback = "\n".join([
        "Traceback (most recent call last):",
        '  File "/x/tempest/api/volume/test_x.py", line 5, in test_b',
        "    self.assertRaises(NotFound, f)",
        '  File "/x/testtools/testcase.py", line 685, in assertRaises',
        "    self.assertThat(our_callable, matcher)",
        '  File "/x/tempest/lib/common/rest_client.py", line 882, in _error_checker',
        "    raise exceptions.BadRequest(resp_body, resp=resp)",
        "tempest.lib.exceptions.BadRequest: Bad request",
    ])
    text = excerpt(traceback)
    assert "testtools" not in text and "assertThat" not in text
    assert "test_x.py" in text and text.endswith("BadRequest: Bad request")


def test_reference_list_and_deployment_facts() -> None:
    tests = reference_tests()
    assert len(tests) == 148 == len(set(tests))
    assert all(t.startswith("tempest.api.volume.") for t in tests)
    pools = [{"name": "h@b#p", "capabilities": {"volume_backend_name": name,
                                                 "storage_protocol": "iSCSI",
                                                 "vendor_name": "blockyard"}}
             for name in ("zeta", "alpha")]
    assert deployment_facts(pools) == {"backend_names": "alpha,zeta",
                                       "storage_protocol": "iSCSI",
                                       "vendor_name": "blockyard"}
