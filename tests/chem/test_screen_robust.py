"""`screen_file` never destroys or drops data: every bad input is a reject row with its reason or
one error naming the file and position; outputs are checked first and written atomically."""

from __future__ import annotations

import gzip
import os
import secrets
from pathlib import Path

import pandas as pd
import pytest

from medgen.chem.paths import output_paths, sort_prefix
from medgen.chem.readers import read_molecules
from medgen.chem.screen import screen_file
from medgen.errors import InputFileError, UserError
from medgen.utils.atomic import _temp_sibling

GOOD = b"smiles,name\nCCO,ethanol\nc1ccccc1,benzene\n"


def _screen(input: Path, out: Path, **kwargs):
    kwargs = {"n_jobs": 1, "progress": False, "groups": ["descriptors"], **kwargs}
    return screen_file(input, out, **kwargs)


def _rejects(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# 1. outputs never overwrite an input or each other --------------------------------------------


def test_input_named_like_the_default_rejects_file_is_refused(tmp_path):
    source = _write(tmp_path / "lib.rejects.csv", GOOD)
    with pytest.raises(UserError, match=r"rejects=.*lib\.rejects\.csv is the input file"):
        _screen(source, tmp_path / "lib.csv")
    assert source.read_bytes() == GOOD and _entries(tmp_path) == ["lib.rejects.csv"]


@pytest.mark.parametrize("key", ["out", "rejects"])
def test_an_output_that_is_the_input_is_refused(tmp_path, key):
    source = _write(tmp_path / "lib.csv", GOOD)
    paths = {"out": tmp_path / "o.csv", "rejects": None, key: tmp_path / "sub" / ".." / "lib.csv"}
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match=f"{key}=.* is the input file"):
        _screen(source, paths["out"], rejects=paths["rejects"])
    assert source.read_bytes() == GOOD


def test_out_and_rejects_the_same_file_is_refused(tmp_path):
    source = _write(tmp_path / "lib.csv", GOOD)
    with pytest.raises(UserError, match=r"out=.*o\.csv and rejects=.*o\.csv are the same file"):
        _screen(source, tmp_path / "o.csv", rejects=tmp_path / "o.csv")


def test_symlinked_and_hard_linked_outputs_are_refused(tmp_path):
    source = _write(tmp_path / "lib.csv", GOOD)
    (tmp_path / "link.csv").symlink_to(source)
    with pytest.raises(UserError, match=r"out=.*link\.csv is the input file"):
        _screen(source, tmp_path / "link.csv")
    os.link(source, tmp_path / "hard.csv")
    with pytest.raises(UserError, match=r"rejects=.*hard\.csv is the input file"):
        _screen(source, tmp_path / "o.csv", rejects=tmp_path / "hard.csv")
    assert source.read_bytes() == GOOD


def test_output_folder_and_formats_are_checked_before_any_work(tmp_path):
    source = _write(tmp_path / "lib.csv", GOOD)
    with pytest.raises(UserError, match=r"the folder .*missing does not exist"):
        _screen(source, tmp_path / "missing" / "o.csv")
    with pytest.raises(UserError, match=r"rejects file must be \.csv"):
        _screen(source, tmp_path / "o.csv", rejects=tmp_path / "r.sdf")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UserError, match=r"out=.*dir\.csv is a folder"):
        _screen(source, tmp_path / "dir.csv")
    assert _entries(tmp_path) == ["dir.csv", "lib.csv"]


def test_input_named_like_a_temporary_of_the_outputs_is_refused(tmp_path):
    source = _write(_temp_sibling(tmp_path / "hits.csv"), GOOD)
    with pytest.raises(UserError, match="named like a temporary file"):
        _screen(source, tmp_path / "hits.csv")
    assert source.exists()


def test_output_paths_names_every_file_a_screen_writes(tmp_path):
    paths = output_paths(tmp_path / "hits.csv.gz")
    assert paths == {
        "out": tmp_path / "hits.csv.gz",
        "rejects": tmp_path / "hits.rejects.csv",
        "summary": tmp_path / "hits.summary.json",
    }


# arguments are checked by the library too ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit=-1"),
        ({"top_k": 0}, "top_k=0"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"groups": ["qedd"]}, "groups=\\['qedd'\\]"),
        ({"sort_by": "potency"}, "sort_by='potency' is not a column"),
        ({"dedup": "yes"}, "dedup='yes'"),
        ({"max_smiles_length": 0}, "max_smiles_length=0"),
        ({"rules": ["lipinsky"]}, "unknown rule 'lipinsky'"),
    ],
)
def test_bad_arguments_are_user_errors_naming_the_argument(tmp_path, kwargs, message):
    source = _write(tmp_path / "lib.csv", GOOD)
    with pytest.raises(UserError, match=message):
        _screen(source, tmp_path / "o.csv", **kwargs)
    assert _entries(tmp_path) == ["lib.csv"]


# 2. inputs that are not what their name says ---------------------------------------------------


def _gzip_truncated(path: Path) -> Path:
    lines = [f"CCO,{secrets.token_hex(16)}" for _ in range(800)]  # > the 8 KiB sniffed up front
    data = gzip.compress(("smiles,id\n" + "\n".join(lines) + "\n").encode())
    return _write(path, data[: int(len(data) * 0.8)])


NOT_WHAT_THE_NAME_SAYS = [
    ("u16.csv", "smiles,name\nCCO,a\n".encode("utf-16"), "UTF-16"),
    ("u16.smi", "CCO a\n".encode("utf-16"), "UTF-16"),
    ("bin.smi", bytes(range(256)) * 20, r"binary data, not a text \.smi file"),
    ("bin.csv", bytes(range(256)) * 20, r"binary data, not a text \.csv file"),
    ("bin.sdf", bytes(range(256)) * 20, r"binary data, not a text \.sdf file"),
    ("bin.parquet", bytes(range(256)) * 20, "not a readable parquet file"),
    ("plain.csv.gz", GOOD, "the name ends in .gz but the file is not gzip-compressed"),
    ("cut.smi.gz", gzip.compress(b"CCO a\n" * 10)[:15], "the gzip stream ended early"),
    ("bad.csv.gz", gzip.compress(GOOD)[:10] + b"\x07" + bytes(20), "corrupt gzip data"),
    ("dup.csv", b"smiles,id,id\nCCO,1,2\n", r"line 1: the header repeats .*\['id'\]"),
    ("two.csv", b"id,a,b\n1,CCO,CCN\n2,c1ccccc1,CC\n", r"\['a', 'b'\]; .*smiles_column"),
    ("names.csv", b"smiles,canonical_smiles\nCCO,CCO\n", "several columns could hold"),
]


@pytest.mark.parametrize(
    ("name", "data", "message"), NOT_WHAT_THE_NAME_SAYS, ids=[c[0] for c in NOT_WHAT_THE_NAME_SAYS]
)
def test_a_file_that_is_not_what_its_name_says_is_one_error_naming_it(tmp_path, name, data,
                                                                      message):  # fmt: skip
    source = _write(tmp_path / name, data)
    with pytest.raises(InputFileError, match=message) as err:
        _screen(source, tmp_path / "o.csv")
    assert str(source) in str(err.value)
    assert _entries(tmp_path) == [name]  # no output, no temporaries


def test_parquet_with_duplicate_columns_is_an_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["CCO"]), pa.array(["CCN"])], names=["smiles"] * 2)
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(InputFileError, match=r"dup\.parquet: the columns \['smiles'\] occur"):
        next(read_molecules(tmp_path / "dup.parquet"))


def test_ambiguous_columns_are_resolved_by_smiles_column(tmp_path):
    source = _write(tmp_path / "two.csv", b"id,a,b\n1,CCO,CCN\n2,c1ccccc1,CC\n")
    summary = _screen(source, tmp_path / "o.csv", smiles_column="b")
    kept = pd.read_csv(tmp_path / "o.csv")
    assert summary.written == 2 and kept["smiles"].tolist() == ["CCN", "CC"]
    assert kept["a"].tolist() == ["CCO", "c1ccccc1"]  # the other column is carried


def test_gzip_truncated_mid_file_fails_and_keeps_the_previous_outputs(tmp_path):
    source = _gzip_truncated(tmp_path / "lib.csv.gz")
    out, rejects = tmp_path / "o.csv", tmp_path / "o.rejects.csv"
    out.write_text("old out\n")
    rejects.write_text("old rejects\n")
    with pytest.raises(InputFileError, match=r"lib\.csv\.gz: the gzip stream ended early \(after "
                                             r"line \d+\): the file is truncated"):  # fmt: skip
        _screen(source, out, groups=[], chunk_size=50, overwrite=True)
    assert out.read_text() == "old out\n" and rejects.read_text() == "old rejects\n"
    assert _entries(tmp_path) == ["lib.csv.gz", "o.csv", "o.rejects.csv"]


@pytest.mark.parametrize("name", ["empty.csv", "empty.smi", "empty.csv.gz", "empty.parquet"])
def test_zero_byte_input_gives_empty_outputs_with_their_columns(tmp_path, name):
    source = _write(tmp_path / name, b"")
    summary = _screen(source, tmp_path / "o.csv")
    assert summary.rows == summary.written == summary.rejected == 0
    assert "mw" in pd.read_csv(tmp_path / "o.csv").columns
    assert list(_rejects(tmp_path / "o.rejects.csv").columns) == ["line", "input", "reason"]


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        ("latin1.csv", "smiles,name\nCCO,a\nCCN,caf\xe9\nCCC,c\n".encode("latin-1"), 3),
        ("mid.smi", b"CCO a\nCCN b\xff\xfe\nCCC c\n", 2),
        ("mid.tsv.gz", gzip.compress(b"smiles\tname\nCCO\ta\nCCN\t\x80\nCCC\tc\n"), 3),
    ],
)
def test_undecodable_rows_are_rejects_and_the_rest_is_screened(tmp_path, name, data, line):
    source = _write(tmp_path / name, data)
    summary = _screen(source, tmp_path / "o.csv")
    rejected = _rejects(tmp_path / "o.rejects.csv")
    assert summary.rows == 3 and summary.written == 2
    assert rejected["reason"].tolist() == [f"undecodable bytes (not UTF-8) at line {line}"]
    assert rejected["line"].tolist() == [line] and rejected["input"].tolist() == ["CCN"]
    assert "\\x" in rejected["name"].item()  # the bad bytes are kept, written as \xNN


def test_sdf_with_latin1_tags_and_a_truncated_sdf_gz(tmp_path):
    from rdkit import Chem

    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    good, bad = f"{block}>  <n>\nx\n\n$$$$\n", f"{block}>  <n>\ncaf\xe9\n\n$$$$\n"
    source = _write(tmp_path / "m.sdf", (good + bad).encode("latin-1"))
    summary = _screen(source, tmp_path / "o.csv")
    rejected = _rejects(tmp_path / "o.rejects.csv")
    assert summary.written == 1 and rejected["reason"].tolist() == [
        "undecodable bytes (not UTF-8) in record 2"
    ]
    records = "".join(block.replace("CCO", secrets.token_hex(8)) + "$$$$\n" for _ in range(300))
    data = gzip.compress(records.encode())
    cut = _write(tmp_path / "cut.sdf.gz", data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"cut\.sdf\.gz: the gzip stream ended early"):
        next(read_molecules(cut))


# 3. per-molecule work is bounded ------------------------------------------------------------


def test_a_megabyte_smiles_is_rejected_unscored(tmp_path):
    source = _write(tmp_path / "long.smi", b"C" * 1_000_000 + b" giant\nCCO ok\n")
    summary = _screen(source, tmp_path / "o.csv", groups=None)  # all groups: scaffold is ~n^3
    assert summary.seconds < 30 and summary.written == 1
    rejected = _rejects(tmp_path / "o.rejects.csv")
    assert rejected["reason"].item() == "SMILES longer than 1000 characters (1,000,000)"
    assert len(rejected["input"].item()) == 1_000_000  # the input is kept whole
    _screen(source, tmp_path / "p.csv", max_smiles_length=2)
    assert _rejects(tmp_path / "p.rejects.csv")["line"].tolist() == [1, 2]


# 4. killed runs: the next run removes exactly their leftovers ---------------------------------


def _strays(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    out, rejects = tmp_path / "hits.csv", tmp_path / "hits.rejects.csv"
    strays = [_temp_sibling(p) for p in (out, rejects, tmp_path / "hits.summary.json")]
    strays.append(tmp_path / f"{sort_prefix(out)}ab12cd_3")
    for path in strays[:3]:
        path.write_text("partial")
    strays[3].mkdir()
    (strays[3] / "run00000.parquet").write_text("partial")
    unrelated = [
        _temp_sibling(tmp_path / "other.csv"),  # another output's temporary
        tmp_path / ".hits.tmp-123.csv",  # not the exact pattern
        tmp_path / "hits.csv.bak",
        tmp_path / "medgen-sort-x1y2z3",
    ]
    for path in unrelated:
        path.write_text("keep")
    return strays, unrelated


def test_rerun_removes_the_temporaries_of_a_killed_run_of_the_same_outputs(tmp_path, caplog):
    source = _write(tmp_path / "lib.csv", GOOD)
    strays, unrelated = _strays(tmp_path)
    with caplog.at_level("WARNING", logger="medgen.chem.paths"):
        _screen(source, tmp_path / "hits.csv")
    assert not any(p.exists() for p in strays)
    assert all(p.exists() for p in unrelated)
    assert "removed 4 temporaries left by an interrupted run" in caplog.text
    assert {"hits.csv", "hits.rejects.csv", "lib.csv"} <= set(_entries(tmp_path))


def test_cleanup_waits_while_another_screen_uses_the_folder(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    source = _write(tmp_path / "lib.csv", GOOD)
    strays, _ = _strays(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a running screen holds
        summary = _screen(source, tmp_path / "hits.csv")
    finally:
        os.close(fd)
    assert summary.written == 2 and all(p.exists() for p in strays)


def test_sort_spills_to_a_folder_named_after_the_output(tmp_path, monkeypatch):
    import tempfile

    from medgen.chem import merge

    made: list[Path] = []
    real = tempfile.mkdtemp

    def recording(**kwargs):
        made.append(Path(real(**kwargs)))
        return str(made[-1])

    monkeypatch.setattr(merge.tempfile, "mkdtemp", recording)
    source = _write(tmp_path / "lib.csv", GOOD)
    _screen(source, tmp_path / "o.csv", sort_by="mw")
    assert [p.parent for p in made] == [tmp_path] and made[0].name.startswith(".o.csv.sort-")
    assert _entries(tmp_path) == ["lib.csv", "o.csv", "o.rejects.csv"]  # spill and parts gone


# 5. CSV line numbers are the physical lines -----------------------------------------------------


def test_rejects_report_the_physical_line_of_a_csv_row(tmp_path):
    data = b'smiles,note\nCCO,"first\nsecond\nthird"\nC1CC,x\r\n"c1ccccc1","a\r\nb"\nC(,y\n'
    source = _write(tmp_path / "multi.csv", data)
    summary = _screen(source, tmp_path / "o.csv")
    rejected = _rejects(tmp_path / "o.rejects.csv")
    assert dict(zip(rejected["input"], rejected["line"], strict=True)) == {"C1CC": 5, "C(": 8}
    kept = pd.read_csv(tmp_path / "o.csv")
    assert kept["line"].tolist() == [2, 6] and summary.rows == 4
    assert kept["note"].tolist() == ["first\nsecond\nthird", "a\r\nb"]


# 6. more odd inputs ---------------------------------------------------------------------------


def test_nul_and_inner_whitespace_in_a_smiles_are_rejected(tmp_path):
    source = _write(tmp_path / "odd.csv", b"smiles,id\nCC\x00,1\nC C,2\nCCO,3\nCC |$_R1;;$|,4\n")
    summary = _screen(source, tmp_path / "o.csv")
    rejected = _rejects(tmp_path / "o.rejects.csv").set_index("id")
    assert rejected.loc[1, "reason"] == "SMILES contains the control character U+0000 at position 3"
    assert rejected.loc[2, "reason"].startswith("invalid: whitespace in the SMILES at position 2")
    assert summary.written == 2  # CCO, and a CXSMILES with its extension


def test_bom_crlf_and_header_only_inputs(tmp_path):
    smi = _write(tmp_path / "bom.smi", "\ufeffCCO ethanol\r\nc1ccccc1 benzene\r\n".encode())
    frame = pd.concat(read_molecules(smi))
    assert frame["smiles"].tolist() == ["CCO", "c1ccccc1"]
    assert frame["name"].tolist() == ["ethanol", "benzene"]
    csv = _write(tmp_path / "bom.csv", "\ufeffSMILES,name\r\nCCO,ethanol\r\n".encode())
    frame = pd.concat(read_molecules(csv))
    assert frame["smiles"].tolist() == ["CCO"] and frame["name"].tolist() == ["ethanol"]
    header_only = _write(tmp_path / "h.csv", b"smiles,pIC50\n")
    summary = _screen(header_only, tmp_path / "o.csv", ranges=["pIC50>5"])
    assert summary.rows == 0 and "pIC50" in pd.read_csv(tmp_path / "o.csv").columns


def test_carried_columns_named_like_score_columns_are_renamed_not_dropped(tmp_path):
    source = _write(tmp_path / "c.csv", b"smiles,mw,line,valid\nCCO,999,7,no\n")
    _screen(source, tmp_path / "o.csv")
    kept = pd.read_csv(tmp_path / "o.csv")
    assert kept[["input_mw", "input_line", "input_valid"]].values.tolist() == [[999, 7, "no"]]
    assert kept["mw"].round(1).tolist() == [46.1] and kept["line"].tolist() == [2]


def test_sdf_tags_of_later_records_are_kept_as_text(tmp_path):
    from rdkit import Chem

    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    text = f"{block}>  <a>\n1.50\n\n$$$$\n{block}>  <b>\n> x <y>\n\n>  <smiles>\nC\n\n$$$$\n"
    frame = pd.concat(read_molecules(_write(tmp_path / "m.sdf", text.encode())))
    assert list(frame.columns) == ["line", "smiles", "name", "a", "b", "input_smiles"]
    assert frame["a"].tolist() == ["1.50", ""] and frame["b"].tolist() == ["", "> x <y>"]
