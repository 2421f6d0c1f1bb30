"""Corpus parsers on synthetic file names (empty files) and on the real EmoDB copy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsl.data.corpora import CORPUS_FORMATS, Corpus, CorpusError, list_corpora, load_corpus


def touch(root: Path, *names: str) -> None:
    """Create empty files (with parent folders) under `root`."""
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def labelled(corpus: Corpus) -> dict[str, tuple[str, str]]:
    """File name -> (label name, speaker)."""
    return {
        p.name: (corpus.label_names[y], s) for p, y, s in zip(corpus.paths, corpus.labels, corpus.speakers)
    }


def test_registry_lists_all_formats() -> None:
    expected = {"emodb", "savee", "casia", "ravdess", "tess", "cremad", "emovo", "urdu"}
    assert expected <= set(CORPUS_FORMATS)
    assert set(list_corpora()) == expected | {"csv"}
    for fmt in CORPUS_FORMATS.values():
        assert fmt.description and "\n" not in fmt.description
        assert len(set(fmt.label_names)) == len(fmt.label_names)


def test_emodb(tmp_path: Path) -> None:
    touch(tmp_path, "03a01Wa.wav", "08b10Lc.wav", "09a05Eb.wav", "10a02Ad.wav", "11b01Fa.wav", "12a07Ta.wav", "16b09Nb.wav")
    c = load_corpus("emodb", tmp_path)
    assert c.label_names == ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")
    got = labelled(c)
    assert got["03a01Wa.wav"] == ("anger", "03")
    assert got["08b10Lc.wav"] == ("boredom", "08")
    assert got["16b09Nb.wav"] == ("neutral", "16")
    assert sorted(c.class_counts().values()) == [1] * 7


def test_savee_folders_and_flat(tmp_path: Path) -> None:
    touch(tmp_path, "DC/a01.wav", "JE/sa03.wav", "JK/su15.wav", "KL/n30.wav", "DC_d02.wav", "KL_f04.wav", "JE_h05.wav")
    c = load_corpus("savee", tmp_path)
    assert c.label_names == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
    got = labelled(c)
    assert got["a01.wav"] == ("anger", "DC")
    assert got["sa03.wav"] == ("sadness", "JE")
    assert got["su15.wav"] == ("surprise", "JK")
    assert got["n30.wav"] == ("neutral", "KL")
    assert got["DC_d02.wav"] == ("disgust", "DC")
    assert got["KL_f04.wav"] == ("fear", "KL")
    assert got["JE_h05.wav"] == ("happiness", "JE")


def test_casia(tmp_path: Path) -> None:
    emotions = ("angry", "fear", "happy", "neutral", "sad", "surprise")
    touch(tmp_path, *(f"{spk}/{e}/{i:03d}.wav" for spk in ("liuchanhg", "wangzhe") for e in emotions for i in (201, 202)))
    c = load_corpus("casia", tmp_path)
    assert c.label_names == emotions
    assert len(c) == 24
    assert set(c.speakers) == {"liuchanhg", "wangzhe"}
    assert c.class_counts() == {e: 4 for e in emotions}
    i = c.paths.index(tmp_path / "wangzhe" / "sad" / "201.wav")
    assert (c.label_names[c.labels[i]], c.speakers[i]) == ("sad", "wangzhe")


def test_ravdess_skips_song(tmp_path: Path) -> None:
    speech = [f"Actor_12/03-01-{e:02d}-01-01-01-12.wav" for e in range(1, 9)]
    touch(tmp_path, *speech, "Actor_12/03-02-03-01-01-01-12.wav", "Actor_05/03-01-05-02-02-02-05.wav")
    c = load_corpus("ravdess", tmp_path)
    assert c.label_names == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert len(c) == 9  # the song file (vocal channel 02) is skipped
    got = labelled(c)
    assert "03-02-03-01-01-01-12.wav" not in got
    assert got["03-01-05-02-02-02-05.wav"] == ("angry", "Actor_05")
    assert got["03-01-08-01-01-01-12.wav"] == ("surprised", "Actor_12")


def test_tess_case_insensitive(tmp_path: Path) -> None:
    names = ["OAF_back_angry.wav", "oaf_bar_Disgust.wav", "YAF_base_fear.wav", "YAF_bath_happy.wav",
             "OAF_bean_neutral.wav", "YAF_beg_ps.wav", "yaf_bite_SAD.wav"]
    touch(tmp_path, *(f"dir/{n}" for n in names))
    c = load_corpus("tess", tmp_path)
    assert c.label_names == ("angry", "disgust", "fear", "happy", "neutral", "pleasant_surprise", "sad")
    got = labelled(c)
    assert got["oaf_bar_Disgust.wav"] == ("disgust", "OAF")
    assert got["YAF_beg_ps.wav"] == ("pleasant_surprise", "YAF")
    assert got["yaf_bite_SAD.wav"] == ("sad", "YAF")


def test_cremad(tmp_path: Path) -> None:
    touch(tmp_path, "1001_DFA_ANG_XX.wav", "1001_IEO_DIS_HI.wav", "1002_TIE_FEA_LO.wav",
          "1002_IOM_HAP_MD.wav", "1091_WSI_NEU_XX.wav", "1091_ITS_SAD_XX.wav")
    c = load_corpus("cremad", tmp_path)
    assert c.label_names == ("anger", "disgust", "fear", "happiness", "neutral", "sadness")
    got = labelled(c)
    assert got["1001_DFA_ANG_XX.wav"] == ("anger", "1001")
    assert got["1091_ITS_SAD_XX.wav"] == ("sadness", "1091")
    assert set(c.speakers) == {"1001", "1002", "1091"}


def test_emovo(tmp_path: Path) -> None:
    touch(tmp_path, "f1/dis-f1-b1.wav", "f2/gio-f2-l3.wav", "f3/neu-f3-n5.wav", "m1/pau-m1-d2.wav",
          "m2/rab-m2-b2.wav", "m3/sor-m3-l1.wav", "m3/tri-m3-n1.wav")
    c = load_corpus("emovo", tmp_path)
    assert c.label_names == ("disgust", "joy", "neutral", "fear", "anger", "surprise", "sadness")
    got = labelled(c)
    assert got["dis-f1-b1.wav"] == ("disgust", "f1")
    assert got["pau-m1-d2.wav"] == ("fear", "m1")
    assert got["tri-m3-n1.wav"] == ("sadness", "m3")


def test_urdu(tmp_path: Path) -> None:
    touch(tmp_path, "Angry/SM1_F10_A010.wav", "Happy/SF3_F2_H002.wav", "Neutral/SM4_F48_N0100.wav",
          "Sad/SF12_F1_S01.wav")
    c = load_corpus("urdu", tmp_path)
    assert c.label_names == ("anger", "happiness", "neutral", "sadness")  # EmoDB's names for the shared classes
    got = labelled(c)
    assert got["SM1_F10_A010.wav"] == ("anger", "SM1") and got["SF12_F1_S01.wav"] == ("sadness", "SF12")


def test_real_urdu_when_present() -> None:
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "urdu"
    if not root.is_dir():
        pytest.skip(f"URDU corpus not found at {root}")
    c = load_corpus("urdu", root)
    assert len(c) == 400 and sorted(c.class_counts().values()) == [100] * 4 and len(set(c.speakers)) == 29


BAD = {
    "emodb": (["03a01Wa.wav"], ["03a01Xa.wav", "08b02Qc.wav", "notemodb.wav"]),
    "savee": (["DC/a01.wav"], ["DC/x01.wav", "JE_sx02.wav", "XX_a03.wav", "DC/readme.wav"]),
    "casia": (["liuchanhg/angry/201.wav"], ["liuchanhg/bored/201.wav", "wangzhe/calm/202.wav"]),
    "ravdess": (["03-01-01-01-01-01-01.wav"], ["03-01-09-01-01-01-01.wav", "03-03-01-01-01-01-01.wav", "03-01-01.wav"]),
    "tess": (["OAF_back_angry.wav"], ["OAF_back_bored.wav", "MAF_back_angry.wav", "OAFback.wav"]),
    "cremad": (["1001_DFA_ANG_XX.wav"], ["1001_DFA_XYZ_XX.wav", "1002_DFA_ANG_ZZ.wav", "1001_ANG.wav"]),
    "emovo": (["dis-f1-b1.wav"], ["xyz-f1-b1.wav", "dis-q9-b1.wav", "dis_f1_b1.wav"]),
    "urdu": (["Angry/SM1_F1_A01.wav"], ["Angry/SM1_F2_X02.wav", "Sad/SM1_F3_A03.wav", "Angry/urdu.wav"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_unknown_codes_reported_together(tmp_path: Path, name: str) -> None:
    good, bad = BAD[name]
    touch(tmp_path, *good, *bad)
    with pytest.raises(CorpusError) as err:
        load_corpus(name, tmp_path)
    msg = str(err.value)
    assert f"{len(bad)} file(s)" in msg
    for b in bad:
        assert str(tmp_path / b) + ":" in msg
    for g in good:
        assert str(tmp_path / g) + ":" not in msg


def test_unknown_code_is_named(tmp_path: Path) -> None:
    touch(tmp_path, "03a01Xa.wav")
    with pytest.raises(CorpusError, match="unknown emotion code 'X'"):
        load_corpus("emodb", tmp_path)


def test_load_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("nope", tmp_path)
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus("emodb", tmp_path / "missing")
    with pytest.raises(CorpusError, match="no .wav"):
        load_corpus("emodb", tmp_path)
    touch(tmp_path, "03-02-01-01-01-01-01.wav")
    with pytest.raises(CorpusError, match="none of 1"):
        load_corpus("ravdess", tmp_path)


def test_manifest_relative_paths(tmp_path: Path) -> None:
    touch(tmp_path, "audio/a.wav", "audio/b.flac", "elsewhere/c.wav")
    absolute = tmp_path / "elsewhere" / "c.wav"
    csv_path = tmp_path / "data" / "manifest.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(f"path,label,speaker\n../audio/a.wav,sad,s1\n../audio/b.flac,angry,\n{absolute},sad,s2\n")
    c = load_corpus("csv", csv_path)
    assert c.name == "csv"
    assert c.label_names == ("angry", "sad")
    assert [p.resolve() for p in c.paths] == [tmp_path / "audio/a.wav", tmp_path / "audio/b.flac", absolute]
    assert list(c.labels) == [1, 0, 1]
    assert c.speakers == ("s1", "unknown", "s2")


def test_manifest_without_speaker_column(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "b.wav")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label\na.wav,x\nb.wav,y\n")
    c = load_corpus("csv", csv_path)
    assert c.speakers == ("unknown", "unknown")
    np.testing.assert_array_equal(c.labels, [0, 1])


def test_manifest_bad_rows_listed_together(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "b.wav")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,speaker\na.wav,x,s\nmissing1.wav,x,s\nb.wav,,s\nmissing2.wav,y,s\n")
    with pytest.raises(CorpusError) as err:
        load_corpus("csv", csv_path)
    msg = str(err.value)
    assert str(csv_path) in msg
    assert "row 3" in msg and "missing1.wav" in msg
    assert "row 4" in msg and "empty label" in msg
    assert "row 5" in msg and "missing2.wav" in msg
    assert "row 2" not in msg


def test_manifest_requires_path_column(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("file,label\na.wav,x\n")
    with pytest.raises(CorpusError, match="path") as err:
        load_corpus("csv", csv_path)
    assert str(csv_path) in str(err.value)


@pytest.mark.emodb
def test_real_emodb(emodb_path: Path) -> None:
    c = load_corpus("emodb", emodb_path)
    assert len(c) == 535
    assert len(set(c.speakers)) == 10
    assert c.n_classes == 7
    letters = {"anger": 127, "boredom": 81, "disgust": 46, "fear": 69, "happiness": 71, "sadness": 62, "neutral": 79}
    assert c.class_counts() == letters


def test_manifest_duplicate_paths_named_and_partial_corpus_kept(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "b.wav")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label\na.wav,x\nb.wav,y\n./a.wav,y\n")
    with pytest.raises(CorpusError, match=r"row 4: .*a.wav: duplicate path .*first on row 2") as err:
        load_corpus("csv", csv_path)
    assert err.value.partial is not None and len(err.value.partial) == 2
