from pipeline.host.code_closure import STAGE_ENTRY_MODULES, code_fingerprint, module_closure


def _package(root):
    pkg = root / "fpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("import numpy\nfrom fpkg import helper\nfrom .sub import thing\n")
    (pkg / "helper.py").write_text("X = 1\n")
    (pkg / "sub.py").write_text("thing = 1\n")
    (pkg / "unrelated.py").write_text("Y = 1\n")
    return pkg


def test_closure_follows_absolute_and_relative_imports_of_our_packages_only(tmp_path):
    _package(tmp_path)
    closure = module_closure(["fpkg.stage"], root=tmp_path, packages=("fpkg",))
    assert sorted(closure) == ["fpkg", "fpkg.helper", "fpkg.stage", "fpkg.sub"]
    assert closure["fpkg.sub"] == tmp_path / "fpkg" / "sub.py"


def test_fingerprint_changes_with_imported_code_only(tmp_path):
    pkg = _package(tmp_path)

    def fingerprint():
        return code_fingerprint(["fpkg.stage"], root=tmp_path, packages=("fpkg",))

    first = fingerprint()
    (pkg / "unrelated.py").write_text("Y = 2\n")
    assert fingerprint() == first
    (pkg / "helper.py").write_text("X = 2\n")
    second = fingerprint()
    assert second != first
    (pkg / "sub.py").write_text("thing = 2\n")
    assert fingerprint() != second


def test_stage_containers_get_the_stage_code_and_not_the_host_side():
    closure = module_closure(STAGE_ENTRY_MODULES)
    for needed in ("pipeline.export.export", "pipeline.export.whisper_hailo", "pipeline.dfc.client", "pipeline.dfc.timeline",
                   "calib.encoder_set", "calib.decoder_set", "pipeline.export.onnx_greedy", "pipeline.tables"):
        assert needed in closure
    for host_only in ("pipeline.host.build", "pipeline.host.docker_engine", "pipeline.host.doctor", "pipeline.host.gpu",
                      "pipeline.host.manifest", "pipeline.host.stage_cache"):
        assert host_only not in closure


def test_no_module_of_pipeline_host_is_in_any_stage_container():
    closure = module_closure(STAGE_ENTRY_MODULES)
    assert [m for m in closure if m.startswith("pipeline.host")] == []
