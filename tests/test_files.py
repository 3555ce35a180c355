"""pipeline/files.py: atomic writes, their temporary names and the cleanup of a killed run's."""

import os

from pipeline.files import final_path_for, remove_partial_files, temp_path_for


def test_temporary_names_map_back_to_the_final_file():
    tmp = temp_path_for("/b/dfc/encoder/net_optimized.har")
    assert tmp.name.startswith(".net_optimized.partial-") and tmp.name.endswith(".har")
    assert f"-{os.getpid()}-" in tmp.name  # one writer: host, process and thread
    assert final_path_for(tmp) == tmp.with_name("net_optimized.har")
    assert final_path_for("/b/dfc/encoder/net.har").name == "net.har"


def test_partial_files_and_folders_of_killed_runs_are_removed_and_nothing_else(tmp_path):
    partial = ["calib/.decoder_calib.partial-12.npz", "calib/.encoder_calib.partial-vm_1-12-13.npy",
               "dfc/encoder/.net.partial-3.har", ".build.partial-9.lock",
               "export/.export-partial-ab_12/enc.onnx", ".bundle.partial-5/config.json", ".bundle.old-5/a.hef"]
    kept = ["calib/decoder_calib.npz", "dfc/encoder/net.har", ".stages/file_hashes.json", "bundle/config.json",
            "calib/download/dev-clean.tar.gz.partial", "calib/download/.x.partial-1.flac",
            ".cache/huggingface/.y.partial-2.bin"]
    for rel in partial + kept:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    removed = remove_partial_files(tmp_path)
    assert len(removed) == len(partial)
    assert not any((tmp_path / rel).exists() for rel in partial)
    assert all((tmp_path / rel).exists() for rel in kept)
