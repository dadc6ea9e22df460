"""Issue 12, kinds 2, 10 and 11: every text table is read by one rule (avtk.data.table), errors name the input
and line, numeric options are range-checked, and paths with spaces are paths (the rest of a wav.scp line)."""
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from avtk.data.table import text_lines
from avtk.errors import AvtkError
from conftest import avtk, run

ZWSP, NBSP = "\u200b", "\u00a0"


def write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fails(*args, rc=1, **kwargs):
    """The stderr of an avtk command that must fail with exit status rc and no traceback."""
    proc = avtk(*args, check=False, **kwargs)
    assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def error_line(stderr, command):
    lines = [x for x in stderr.splitlines() if " ERROR " in x]
    assert len(lines) == 1, stderr
    return re.sub(r"^\S+ \S+ ERROR \[avtk " + re.escape(command) + r"\] ", "", lines[0])


# --------------------------------------------------------------------------------------------- the rule


def test_bom_and_crlf_are_accepted_and_keys_are_what_a_person_sees(tmp_path):
    f = write_bytes(tmp_path / "utt2spk", b"\xef\xbb\xbfu1 s1\r\nu2 s1\r\n\r\nu3 s2")
    assert list(text_lines(f)) == [(1, "u1 s1"), (2, "u2 s1"), (3, ""), (4, "u3 s2")]


@pytest.mark.parametrize("data, why", [
    (b"u1 s1\nu\xe92 s1\n", "not UTF-8 text (byte 0xe9 at column 2)"),
    (b"u1 s1\nu2\xe2\x80\x8b s1\n", "invisible character U+200B (ZERO WIDTH SPACE) at column 3"),
    (b"u1 s1\nu2 s1\xef\xbb\xbf\n", "invisible character U+FEFF (ZERO WIDTH NO-BREAK SPACE) at column 6"),
    (b"u1 s1\nu2\xc2\xa0s1\n", "white space other than space or tab, U+00A0 (NO-BREAK SPACE), at column 3"),
    (b"u1 s1\nu2 s1\ru3 s1\n", "carriage return inside a line at column 6"),
    (b"u1 s1\nu2\x00 s1\n", "control character U+0000 (Cc) at column 3"),
])
def test_bad_text_is_rejected_naming_file_line_and_column(tmp_path, data, why):
    f = write_bytes(tmp_path / "utt2spk", data)
    with pytest.raises(AvtkError) as err:
        list(text_lines(f))
    assert str(err.value) == f"{f}:2: {why}"


def test_free_text_may_hold_format_characters_but_not_its_key(tmp_path):
    f = write_bytes(tmp_path / "text", f"u1 word\u200cword\nu{ZWSP}2 x\n".encode())
    with pytest.raises(AvtkError, match=r":2: invisible character U\+200B"):
        list(text_lines(f, keys_only=True))
    assert next(text_lines(f, keys_only=True)) == (1, "u1 word\u200cword")


# ------------------------------------------------------------------------------------ data directories


def make_dir(root, wav_dir="wav", n=3):
    """root/data with n utterances whose wavs live in root/<wav_dir> (which may contain spaces)."""
    d = root / "data"
    d.mkdir(parents=True)
    (root / wav_dir).mkdir(parents=True)
    utts = [f"s1-u{i:02d}" for i in range(n)]
    for u in utts:
        sf.write(root / wav_dir / f"{u} take.wav", np.full(1600, 0.01, np.float32), 16000)
    (d / "wav.scp").write_text("".join(f"{u} {root / wav_dir}/{u} take.wav\n" for u in utts))
    (d / "utt2spk").write_text("".join(f"{u} s1\n" for u in utts))
    (d / "spk2utt").write_text("s1 " + " ".join(utts) + "\n")
    return d


def test_paths_with_spaces_pass_validate_and_fix(tmp_path):
    d = make_dir(tmp_path, "my wavs")
    proc = run(["validate_data_dir.sh", "--no-feats", "--check-audio", d])
    assert "data: OK" in proc.stderr
    run(["fix_data_dir.sh", d])
    assert (d / "wav.scp").read_text().splitlines()[0] == f"s1-u00 {tmp_path}/my wavs/s1-u00 take.wav"
    (tmp_path / "my wavs" / "s1-u01 take.wav").unlink()
    proc = run(["validate_data_dir.sh", "--no-feats", "--check-audio", d], check=False)
    assert proc.returncode == 1
    assert (f"{d}/wav.scp:2: utterance 's1-u01': audio file '{tmp_path}/my wavs/s1-u01 take.wav' does not exist"
            in proc.stderr)


def test_bom_crlf_data_dir_is_valid_and_fix_writes_clean_keys(tmp_path):
    d = make_dir(tmp_path)
    for name in ("wav.scp", "utt2spk", "spk2utt"):
        text = (d / name).read_text()
        (d / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert "data: OK" in run(["validate_data_dir.sh", "--no-feats", d]).stderr
    run(["fix_data_dir.sh", d])
    assert (d / "utt2spk").read_bytes() == b"s1-u00 s1\ns1-u01 s1\ns1-u02 s1\n"


def test_bad_bytes_and_invisible_keys_in_a_data_dir(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2spk").write_bytes(b"s1-u00 s1\ns1-u01\xe2\x80\x8b s1\ns1-u02 s\xe91\n")
    proc = run(["validate_data_dir.sh", "--no-feats", d], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{d}/utt2spk:2: invisible character U+200B (ZERO WIDTH SPACE) at column 7" in proc.stderr
    assert f"{d}/utt2spk:3: not UTF-8 text (byte 0xe9 at column 9)" in proc.stderr
    before = (d / "utt2spk").read_bytes()
    err = fails("fix-data-dir", d)
    assert error_line(err, "fix-data-dir") == (f"{d}/utt2spk:2: invisible character U+200B (ZERO WIDTH SPACE) at "
                                               "column 7 (and 1 more problems; run validate-data-dir)")
    assert (d / "utt2spk").read_bytes() == before


def test_problem_count_is_exact(tmp_path):
    d = make_dir(tmp_path, n=16)
    (d / "utt2dur").write_text("".join(f"s1-u{i:02d} -1\n" for i in range(16)))  # 16 bad lines, 10 listed
    proc = run(["validate_data_dir.sh", "--no-feats", d], check=False)
    assert proc.returncode == 1
    assert f"{d}/utt2dur: malformed lines: 6 more not shown (16 in all)" in proc.stderr
    assert proc.stderr.count(f"{d}/utt2dur:") == 10 + 1
    assert f"{d}: 16 problem(s), listed or counted above" in proc.stderr


def test_duplicate_trial_is_the_same_error_everywhere(tmp_path):
    d = make_dir(tmp_path)
    (d / "trials").write_text("s1-u00 s1-u01 target\ns1-u01 s1-u02 target\ns1-u00 s1-u01 target\n")
    proc = run(["validate_data_dir.sh", "--no-feats", d], check=False)
    assert proc.returncode == 1
    assert f"{d}/trials:3: duplicate trial s1-u00 s1-u01 (first at line 1)" in proc.stderr


# ------------------------------------------------------------------------------------------ other readers


def test_split_scp_rejects_bad_text_and_writes_nothing(tmp_path):
    scp = write_bytes(tmp_path / "wav.scp", b"a x.wav\nb\xff y.wav\nc z.wav\n")
    err = fails("split-scp", scp, tmp_path / "1.scp", tmp_path / "2.scp")
    assert error_line(err, "split-scp") == f"{scp}:2: not UTF-8 text (byte 0xff at column 2)"
    assert not (tmp_path / "1.scp").exists() and not (tmp_path / "2.scp").exists()
    write_bytes(scp, b"\xef\xbb\xbfa x.wav\r\nb y.wav\r\n")
    avtk("split-scp", scp, tmp_path / "1.scp", tmp_path / "2.scp")
    assert (tmp_path / "1.scp").read_bytes() == b"a x.wav\n"


def test_shell_helpers_give_the_same_verdict(tmp_path):
    good = write_bytes(tmp_path / "utt2spk", b"\xef\xbb\xbfu1 s1\r\nu2 s1\r\n")
    assert run(["utt2spk_to_spk2utt", good]).stdout == "s1 u1 u2\n"
    bad = write_bytes(tmp_path / "bad", f"u1 s1\nu{ZWSP}2 s1\n".encode())
    for cmd in (["utt2spk_to_spk2utt", bad], ["spk2utt_to_utt2spk", bad], ["filter_scp", good, bad]):
        proc = run(cmd, check=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.strip() == f"{bad}:2: invisible character U+200B (ZERO WIDTH SPACE) at column 2"


def test_shell_helpers_and_split_scp_reject_duplicate_keys_and_name_the_file(tmp_path):
    utt2spk = write_bytes(tmp_path / "utt2spk", b"a s1\nb s1\nb s1\n")
    spk2utt = write_bytes(tmp_path / "spk2utt", b"s1 a b\ns2 c\ns1 d\n")
    for cmd, why in ((["utt2spk_to_spk2utt", utt2spk], f"{utt2spk}:3: duplicate key 'b' (first on line 2)"),
                     (["spk2utt_to_utt2spk", spk2utt], f"{spk2utt}:3: duplicate key 's1' (first on line 1)")):
        proc = run(cmd, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", why + "\n")
    proc = run(["utt2spk_to_spk2utt"], check=False, input="a s1\nb s1\nb s1\n")
    assert (proc.returncode, proc.stdout) == (1, "") and proc.stderr == "standard input:3: duplicate key 'b' (first on line 2)\n"
    write_bytes(spk2utt, b"s1 a b\ns2 b\n")
    proc = run(["spk2utt_to_utt2spk", spk2utt], check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"{spk2utt}:2: utterance 'b' is listed twice (first on line 1)\n"
    write_bytes(utt2spk, b"a s1\nb s1 x\nc s2\n")
    proc = run(["utt2spk_to_spk2utt", utt2spk], check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"{utt2spk}:2: malformed line (expected 2 fields): 'b s1 x'\n"
    scp = write_bytes(tmp_path / "wav.scp", b"a x.wav\nb y.wav\nb z.wav\n")
    outs = [tmp_path / "1.scp", tmp_path / "2.scp"]
    err = fails("split-scp", scp, *outs)
    assert error_line(err, "split-scp") == f"{scp}:3: duplicate key 'b' (first on line 2)"
    proc = run(["split_scp", scp, *outs], check=False)
    assert proc.returncode == 1 and f"ERROR [avtk split-scp] {scp}:3: duplicate key 'b' (first on line 2)" in proc.stderr
    assert not any(o.exists() for o in outs)


def test_landmarks_with_a_bom_keep_their_first_frame(tmp_path):
    from avtk.face.extract import read_landmarks

    marks = " ".join(["1.0"] * 10)
    f = write_bytes(tmp_path / "landmarks.txt", f"\ufeff0000.jpg {marks}\r\n0001.jpg {marks}\r\n".encode())
    assert sorted(read_landmarks("u", f)) == ["0000.jpg", "0001.jpg"]


def test_scp_duplicate_key_names_the_input_and_crlf_text_ark_reads(tmp_path):
    ark = write_bytes(tmp_path / "t.ark", b"u1  [\r\n  1.0 2.0 \r\n  3.0 4.0 ]\r\nu2  [ 5.0 6.0 ]\r\n")
    proc = avtk("copy-feats", f"ark:{ark}", f"ark,scp:{tmp_path}/b.ark,{tmp_path}/b.scp")
    assert "copied 2 entries" in proc.stderr
    lines = (tmp_path / "b.scp").read_text().splitlines()
    scp = tmp_path / "dup.scp"
    scp.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")
    err = fails("copy-feats", f"scp:{scp}", f"ark,scp:{tmp_path}/c.ark,{tmp_path}/c.scp")
    assert error_line(err, "copy-feats") == f"{scp}:3: duplicate key 'u1' (first on line 1)"
    assert not (tmp_path / "c.ark").exists() and not (tmp_path / "c.scp").exists()
    write_bytes(scp, lines[0].encode() + b"\n\xe9 y.ark:9\n")
    assert error_line(fails("copy-feats", f"scp:{scp}", "ark,t:-"), "copy-feats") == \
        f"{scp}:2: not UTF-8 text (byte 0xe9 at column 1)"


def test_ark_keys_follow_the_text_rule(tmp_path):
    text = b"u1  [ 1.0 2.0 ]\nu2  [ 3.0 4.0 ]\n"
    bom = write_bytes(tmp_path / "bom.txt", b"\xef\xbb\xbf" + text)
    avtk("copy-feats", f"ark,t:{bom}", f"ark,scp:{tmp_path}/b.ark,{tmp_path}/b.scp")
    assert [x.split()[0] for x in (tmp_path / "b.scp").read_text().splitlines()] == ["u1", "u2"]
    bad = write_bytes(tmp_path / "z.txt", text.replace(b"u2", f"u{ZWSP}2".encode()))
    binary = tmp_path / "z.ark"
    from avtk.io.ark import open_writer
    with open_writer(f"ark:{tmp_path}/ok.ark") as w:
        w["u1"], w["u2"] = np.zeros(2, np.float32), np.ones(2, np.float32)
    binary.write_bytes((tmp_path / "ok.ark").read_bytes().replace(b"u2", f"u{ZWSP}2".encode()))
    for ark in (bad, binary):
        out = tmp_path / "o"
        err = fails("copy-feats", f"ark:{ark}", f"ark,scp:{out}.ark,{out}.scp")
        assert error_line(err, "copy-feats") == (f"ark:{ark}: {ark}: entry 2 (key 'u\\u200b2'): invisible character "
                                                 "U+200B (ZERO WIDTH SPACE) at column 2 of the key")
        assert not (tmp_path / "o.ark").exists() and not (tmp_path / "o.scp").exists()


# ------------------------------------------------------------------------------------ options and configs


def test_numeric_options_are_range_checked(tmp_path):
    out = tmp_path / "e.ark"
    for option, value, why in [("--num-frames", "0", "0 is out of range (must be >= 1)"),
                               ("--seed-crops", "-2", "-2 is out of range (must be >= 0)"),
                               ("--crop-seconds", "nan", "'nan' is not a finite number"),
                               ("--max-frames", "1.5", "'1.5' is not an integer")]:
        err = fails("extract-embeddings", "--model", "m.pt", option, value, "scp:x.scp", f"ark:{out}")
        assert f"ERROR [avtk extract-embeddings] argument {option}: {why}" in err
    err = fails("score", "--trials", "t", "--top-n", "1", "scp:e.scp", tmp_path / "s")
    assert "argument --top-n: 1 is out of range (must be >= 2)" in err
    assert not out.exists()


def test_flat_config_rejects_nested_mappings_and_bad_text(tmp_path):
    cfg = tmp_path / "score.yaml"
    cfg.write_text("top_n: 5\ncohort:\n  path: x\n")
    err = fails("score", "--config", cfg, "--trials", "t", "scp:e.scp", tmp_path / "s")
    assert (f"ERROR [avtk score] {cfg}:2: option 'cohort' is a nested mapping; a --config file holds flat "
            "`option: value` lines") in err
    assert "unrecognized arguments" not in err
    cfg.write_bytes(b"top_n: 5\ntrials: t\xe9\n")
    err = fails("score", "--config", cfg, "scp:e.scp", tmp_path / "s")
    assert f"{cfg}:2: not UTF-8 text (byte 0xe9 at column 10)" in err


@pytest.mark.parametrize("key, why", [
    (f"enc{ZWSP}oder", "invisible character U+200B (ZERO WIDTH SPACE) at column 6"),
    (f"enc{NBSP}oder", "white space other than space or tab, U+00A0 (NO-BREAK SPACE), at column 6"),
])
def test_both_yaml_readers_hold_keys_to_the_text_rule(tmp_path, key, why):
    from avtk.data.table import read_yaml

    train = write_bytes(tmp_path / "c.yaml", f"model:\n  {key}: resnet\n".encode())
    err = fails("train", "--config", train, "--train-data", tmp_path / "d", "--exp", tmp_path / "exp")
    assert error_line(err, "train") == f"{train}:2: {why}"
    assert not any((tmp_path / "exp").rglob("*"))  # an empty experiment directory at most
    flat = write_bytes(tmp_path / "f.yaml", f"top_n: 5\n{key}: 3\n".encode())
    err = fails("score", "--config", flat, "--trials", "t", "scp:e.scp", tmp_path / "s")
    assert error_line(err, "score") == f"{flat}:2: {why.replace('column 6', 'column 4')}"
    assert not (tmp_path / "s").exists()
    with pytest.raises(AvtkError) as caught:  # the same rule where a free-text line is checked by its key
        list(text_lines(write_bytes(tmp_path / "text", f"u1{NBSP}hello world\n".encode()), keys_only=True))
    assert str(caught.value).endswith(":1: white space other than space or tab, U+00A0 (NO-BREAK SPACE), at column 3")
    bad = write_bytes(tmp_path / "b.yaml", b"model:\n  encoder: r\xe9snet\n")
    with pytest.raises(AvtkError) as caught:
        read_yaml(bad)
    assert str(caught.value) == f"{bad}:2: not UTF-8 text (byte 0xe9 at column 13)"


def test_a_repeated_yaml_key_is_an_error_at_any_level(tmp_path):
    train = write_bytes(tmp_path / "c.yaml", b"optim:\n  lr: 0.1\nmodel:\n  encoder: resnet\noptim:\n  lr: 0.2\n")
    err = fails("train", "--config", train, "--train-data", tmp_path / "d", "--exp", tmp_path / "exp")
    assert error_line(err, "train") == f"{train}:5: duplicate key 'optim' (first on line 1)"
    write_bytes(train, b"optim:\n  lr: 0.1\n  weight_decay: 0.0\n  lr: 0.2\n")
    err = fails("train", "--config", train, "--train-data", tmp_path / "d", "--exp", tmp_path / "exp")
    assert error_line(err, "train") == f"{train}:4: duplicate key 'lr' (first on line 2)"
    assert not any((tmp_path / "exp").rglob("*"))  # an empty experiment directory at most
    flat = write_bytes(tmp_path / "f.yaml", b"top_n: 5\ntop_n: 6\n")
    err = fails("score", "--config", flat, "--trials", "t", "scp:e.scp", tmp_path / "s")
    assert error_line(err, "score") == f"{flat}:2: duplicate key 'top_n' (first on line 1)"
    from avtk.calibration import FusionModel

    model = write_bytes(tmp_path / "m.yaml", b"method: mean\nbias: 0.0\nbias: 1.0\n")
    with pytest.raises(AvtkError) as caught:
        FusionModel.load(model)
    assert str(caught.value) == f"{model}:3: duplicate key 'bias' (first on line 2)"


def test_flat_config_errors_name_the_file(tmp_path):
    flat = write_bytes(tmp_path / "f.yaml", b"top_n: 5\ntop_m: 6\n")
    err = fails("score", "--config", flat, "--trials", "t", "scp:e.scp", tmp_path / "s")
    assert error_line(err, "score") == (f"{flat}:2: unknown option 'top_m' (known: allow-missing, cohort, "
                                        "cohort-utt2spk, map-paths, mean-from, subtract-mean, top-n, trials, verbose, "
                                        "write-quality)")
    write_bytes(flat, b"- top_n: 5\n")
    err = fails("score", "--config", flat, "--trials", "t", "scp:e.scp", tmp_path / "s")
    assert error_line(err, "score") == f"{flat}: a --config file holds a mapping of option: value lines, not a list"
    assert not (tmp_path / "s").exists()


def test_model_with_unknown_encoder_names_the_file(tmp_path):
    model = tmp_path / "model.pt"
    torch.save({"model": {}, "config": {"model": {"encoder": "nope"}}}, model)
    (tmp_path / "wav.scp").write_text("u1 a.wav\n")
    err = fails("extract-embeddings", "--model", model, f"scp:{tmp_path}/wav.scp", f"ark:{tmp_path}/e.ark")
    assert error_line(err, "extract-embeddings").startswith(f"{model}: unknown encoder 'nope'; known: ")
    assert not (tmp_path / "e.ark").exists()


def test_extract_baseline_on_a_too_short_utterance(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    sf.write(tmp_path / "short.wav", np.full(100, 0.01, np.float32), 16000)
    (d / "wav.scp").write_text(f"u1 {tmp_path}/short.wav\n")
    (d / "utt2spk").write_text("u1 s1\n")
    err = fails("extract-baseline", d, f"ark,scp:{tmp_path}/b.ark,{tmp_path}/b.scp")
    assert error_line(err, "extract-baseline") == (
        f"{d}: utterance 'u1': 100 samples (0.006 s) is shorter than one 25 ms analysis window (400 samples at "
        "16 kHz): no MFCC baseline")
    assert not (tmp_path / "b.ark").exists() and not (tmp_path / "b.scp").exists()
