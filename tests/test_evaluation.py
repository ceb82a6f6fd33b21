"""The evaluator against hand-computed values and a naive, loop-by-loop reference."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from delfx.cli import main as cli_main
from delfx.datasets.revisited import RetrievalDataset
from delfx.evaluation import average_precision, evaluate, precision_at_k
from delfx.evaluation.revisited import junk_free_ranks
from delfx.io.rankings import save_rankings


def naive_ap_and_pk(ranked, positives, junk, kappas=(1, 5, 10)):
    """The protocol written out step by step: walk the list, skip junk, accumulate."""
    positives, junk = set(int(x) for x in positives), set(int(x) for x in junk)
    pos_ranks, clean_rank = [], 0
    for idx in ranked:
        idx = int(idx)
        if idx in positives:
            pos_ranks.append(clean_rank)
            clean_rank += 1
        elif idx in junk:
            continue
        else:
            clean_rank += 1
    ap = 0.0
    for j, r in enumerate(pos_ranks):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / (2 * len(positives))
    pk = []
    for k in kappas:
        if not pos_ranks:
            pk.append(0.0)
            continue
        kq = min(max(pos_ranks) + 1, k)
        pk.append(sum(1 for r in pos_ranks if r + 1 <= kq) / kq)
    return ap, pk


def test_ap_hand_computed():
    # positives at ranks 0 and 2: (1 + 1)/4 + (1/2 + 2/3)/4
    ranks = junk_free_ranks(np.array([0, 1, 2, 3]), np.array([0, 2]), np.array([], dtype=int))
    assert ranks.tolist() == [0, 2]
    assert average_precision(ranks, 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)


def test_junk_ranked_ahead_of_positive_is_removed():
    ranked = np.array([1, 0, 3, 2])  # 1 is junk, ahead of positive 0
    ranks = junk_free_ranks(ranked, np.array([0, 2]), np.array([1]))
    assert ranks.tolist() == [0, 2]
    assert average_precision(ranks, 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    # without junk removal the same list scores much lower
    raw = junk_free_ranks(ranked, np.array([0, 2]), np.array([], dtype=int))
    assert average_precision(raw, 2) == pytest.approx((0 + 0.5) / 4 + (1 / 3 + 2 / 4) / 4)


def test_short_list_counts_missing_positives_as_not_retrieved():
    ranks = junk_free_ranks(np.array([0, 1]), np.array([0, 2, 5]), np.array([], dtype=int))
    assert average_precision(ranks, 3) == pytest.approx(2 / 6)


def test_precision_at_k_uses_kq():
    # 1-based positive ranks 1 and 3: kq = min(3, k)
    p = precision_at_k(np.array([0, 2]), (1, 5, 10))
    assert p.tolist() == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert precision_at_k(np.array([], dtype=int), (1, 5)).tolist() == [0.0, 0.0]


def test_query_without_positives_is_left_out():
    rankings = [np.array([0, 1, 2]), np.array([2, 1, 0])]
    sets = [(np.array([0]), np.array([], dtype=int)), (np.array([], dtype=int), np.array([1]))]
    s = evaluate(rankings, sets)
    assert s.n_evaluated == 1
    assert s.mAP == pytest.approx(1.0)
    assert np.isnan(s.aps[1])


def test_all_queries_empty_gives_nan():
    s = evaluate([np.array([0])], [(np.array([], dtype=int), np.array([], dtype=int))])
    assert np.isnan(s.mAP) and s.n_evaluated == 0


def test_matches_naive_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    n_db = 60
    rankings, sets, ref_ap, ref_pk = [], [], [], []
    for _ in range(40):
        perm = rng.permutation(n_db)[: rng.integers(5, n_db + 1)]  # some lists are short
        labels = rng.choice(3, size=n_db, p=[0.8, 0.12, 0.08])
        pos, junk = np.flatnonzero(labels == 1), np.flatnonzero(labels == 2)
        if pos.size == 0:
            pos = np.array([int(perm[-1])])
            junk = np.setdiff1d(junk, pos)
        rankings.append(perm)
        sets.append((pos, junk))
        ap, pk = naive_ap_and_pk(perm, pos, junk)
        ref_ap.append(ap)
        ref_pk.append(pk)
    s = evaluate(rankings, sets)
    np.testing.assert_allclose(s.aps, ref_ap, rtol=1e-12)
    assert s.mAP == pytest.approx(np.mean(ref_ap))
    np.testing.assert_allclose(s.mP, np.mean(ref_pk, axis=0), rtol=1e-12)


def test_protocol_sets_on_dataset(tiny_dataset):
    root, name = tiny_dataset
    ds = RetrievalDataset(root, name)
    easy = ds.protocol_sets("easy")[0]
    medium = ds.protocol_sets("medium")[0]
    hard = ds.protocol_sets("hard")[0]
    assert easy[0].tolist() == [0, 2] and easy[1].tolist() == [1, 4]
    assert medium[0].tolist() == [0, 2, 4] and medium[1].tolist() == [1]
    assert hard[0].tolist() == [4] and hard[1].tolist() == [0, 1, 2]


def test_cli_evaluate_prints_seed_lines_and_writes_json(tiny_dataset, tmp_path, capsys):
    root, name = tiny_dataset
    # q0: db4 (hard), db1 (junk), db0 (easy), db3, db2 (easy), db5 ; q1: short list db5, db3
    ranks = np.array([[4, 1, 0, 3, 2, 5], [5, 3, 0, 1, 2, 4]])
    save_rankings(tmp_path / "r.npy", ranks)
    out = tmp_path / "res.json"
    rc = cli_main(
        [
            "evaluate",
            "--root",
            str(root),
            "--dataset",
            name,
            "--ranks",
            str(tmp_path / "r.npy"),
            "--output",
            str(out),
            "--method",
            "toy",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    # Easy, q0: positives {0, 2}, junk {1, 4}: clean list db0, db3, db2 -> ranks 0, 2
    # Easy, q1: positives {3}, junk {5}: db3 at rank 0 -> AP 1
    ap_q0 = 0.5 + (0.5 + 2 / 3) / 4
    assert res["protocols"]["easy"]["mAP"] == pytest.approx(100 * (ap_q0 + 1.0) / 2)
    # Hard: q0 positives {4}, first -> AP 1; q1 has no hard positives -> left out
    assert res["protocols"]["hard"]["mAP"] == pytest.approx(100.0)
    assert res["protocols"]["hard"]["n_queries"] == 1
    # Medium, q0: positives {0, 2, 4}, junk {1}: clean list db4, db0, db3, db2 -> ranks 0, 1, 3
    ap_med = (2 / 2 + (1 + 1) / 2 + (2 / 3 + 3 / 4) / 2) / 3
    assert res["protocols"]["medium"]["mAP"] == pytest.approx(100 * (ap_med + 1.0) / 2)
    assert res["method"] == "toy" and res["dataset"] == name
    assert set(res) >= {"dataset", "method", "protocols", "timings"}
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f">> {name}: mAP E: ")
    assert ", M: " in lines[0] and ", H: 100.0" in lines[0]
    assert lines[1].startswith(f">> {name}: mP@k[1, 5, 10] E: [")


def test_old_protocol(tmp_path):
    from tests.conftest import make_photo

    root, name = tmp_path, "oxford5k"
    for n in ["a", "b", "c", "q"]:
        make_photo(root / name / "jpg" / f"{n}.jpg", seed=1)
    gnd = {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q"],
        "gnd": [{"bbx": [0, 0, 10, 10], "ok": [2], "junk": [0]}],
    }
    (root / name / f"gnd_{name}.pkl").write_bytes(pickle.dumps(gnd))
    ds = RetrievalDataset(root, name)
    assert ds.protocols == ("old",)
    np.savetxt(tmp_path / "r.txt", np.array([[0, 1, 2]]), fmt="%d")
    out = tmp_path / "o.json"
    assert (
        cli_main(
            [
                "evaluate",
                "--root",
                str(root),
                "--dataset",
                name,
                "--ranks",
                str(tmp_path / "r.txt"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    # junk a removed: b, c -> positive c at rank 1: (0 + 1/2) / 2
    assert res["protocols"]["old"]["mAP"] == pytest.approx(25.0)


def test_text_rankings_with_names(tiny_dataset, tmp_path):
    from delfx.io.rankings import load_rankings

    root, name = tiny_dataset
    ds = RetrievalDataset(root, name)
    f = tmp_path / "r.txt"
    f.write_text("# comment\nq1: db3 db5\nq0: 0 db2\n")
    lists = load_rankings(f, ds.images, ds.queries)
    assert [x.tolist() for x in lists] == [[0, 2], [3, 5]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("0 1 9\n3\n", "out of range"),
        ("0 1 1\n3\n", "more than once"),
        ("0 1\n", "2 queries"),
        ("0 nosuch\n3\n", "unknown database image 'nosuch'"),
    ],
)
def test_bad_rankings_are_one_line_errors(tiny_dataset, tmp_path, capsys, content, message):
    root, name = tiny_dataset
    f = tmp_path / "bad.txt"
    f.write_text(content)
    out = tmp_path / "never.json"
    rc = cli_main(
        [
            "evaluate",
            "--root",
            str(root),
            "--dataset",
            name,
            "--ranks",
            str(f),
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err and "bad.txt" in err
    assert not out.exists()


def test_scores_matrix_is_refused(tiny_dataset, tmp_path):
    root, name = tiny_dataset
    np.save(tmp_path / "s.npy", np.random.default_rng(0).random((6, 2)))
    rc = cli_main(
        [
            "evaluate",
            "--root",
            str(root),
            "--dataset",
            name,
            "--ranks",
            str(tmp_path / "s.npy"),
            "--output",
            str(tmp_path / "x.json"),
        ]
    )
    assert rc == 2
