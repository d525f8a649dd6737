import numpy as np
import pytest

from rcnn.evaluation.voc_eval import ImageTruth, evaluate_class, voc_ap


def truth(boxes, difficult=None):
    boxes = np.array(boxes, float).reshape(-1, 4)
    flags = np.zeros(len(boxes), bool) if difficult is None else np.array(difficult, bool)
    return ImageTruth(boxes, flags)


# Two images: "a" with two cars, "b" with one.
GT = {"a": truth([[10, 10, 50, 40], [60, 10, 90, 40]]), "b": truth([[5, 5, 45, 45]])}
HIT_A1, HIT_B = [11, 10, 50, 41], [5, 6, 44, 45]
BACKGROUND = [100, 100, 120, 120]


def evaluate(dets, gt=GT):
    ids = [d[0] for d in dets]
    scores = np.array([d[1] for d in dets], float)
    boxes = np.array([d[2] for d in dets], float).reshape(-1, 4)
    return evaluate_class(ids, scores, boxes, gt)


def test_hand_computed_case():
    # tp, fp (a duplicate of a1), tp, fp (background): recall 1/3 1/3 2/3 2/3, precision
    # 1 1/2 2/3 1/2. 11-point: t = 0..0.3 -> 1, t = 0.4..0.6 -> 2/3, above -> 0: 6/11.
    # Area: the envelope 1 up to recall 1/3, 2/3 up to 2/3, then nothing: 1/3 + 2/9 = 5/9.
    dets = [("a", 0.9, HIT_A1), ("a", 0.8, HIT_A1), ("b", 0.7, HIT_B), ("b", 0.6, BACKGROUND)]
    result = evaluate(dets)
    assert result["ap_07"] == pytest.approx(6 / 11)
    assert result["ap"] == pytest.approx(5 / 9)
    assert result["recall"] == pytest.approx(2 / 3) and result["positives"] == 3


def test_perfect_detections_give_one():
    dets = [("a", 0.9, [10, 10, 50, 40]), ("a", 0.8, [60, 10, 90, 40]), ("b", 0.7, HIT_B)]
    result = evaluate(dets)
    assert result["ap_07"] == pytest.approx(1.0) and result["ap"] == pytest.approx(1.0)


def test_duplicate_is_a_false_positive():
    once = evaluate([("b", 0.9, HIT_B)])
    twice = evaluate([("b", 0.9, HIT_B), ("b", 0.8, HIT_B)])
    assert once["recall"] == twice["recall"] == pytest.approx(1 / 3)
    recall, precision = twice["curve"]
    assert precision.tolist() == [1.0, 0.5]


def test_detection_on_a_difficult_object_changes_nothing():
    gt = {**GT, "b": truth([[5, 5, 45, 45], [60, 60, 100, 100]], [False, True])}
    dets = [("a", 0.9, HIT_A1), ("b", 0.7, HIT_B), ("b", 0.6, BACKGROUND)]
    plain = evaluate(dets, gt)
    with_difficult = evaluate([*dets, ("b", 0.8, [61, 60, 100, 99])], gt)
    assert plain["positives"] == with_difficult["positives"] == 3  # difficult not counted
    for key in ("ap_07", "ap", "recall"):
        assert with_difficult[key] == pytest.approx(plain[key])


def test_no_detections_give_zero():
    result = evaluate([])
    assert result["ap_07"] == 0.0 and result["ap"] == 0.0 and result["recall"] == 0.0


def test_an_overlap_of_exactly_half_is_a_hit():
    # The devkit's VOCevaldet.m matches at ovmax >= minoverlap: IoU exactly 0.5 is enough.
    gt = {"c": truth([[0, 0, 10, 10]])}
    assert evaluate([("c", 0.9, [0, 0, 10, 20])], gt)["recall"] == 1.0  # IoU 0.5
    assert evaluate([("c", 0.9, [0, 0, 10, 21])], gt)["recall"] == 0.0  # IoU 10/21


# VOC's 1-based inclusive GT 56 55 193 128 and detection 56 55 124 128: the devkit's overlap
# is 69*74 / (138*74) = 0.5 exactly; in this project's convention, minus one at the top left.
HALF_GT, HALF_DET = [55, 54, 193, 128], [55, 54, 124, 128]


def test_integer_boxes_at_exactly_half_score_as_the_devkit_scores_them():
    # Four images, one car each, each found by a detection at IoU exactly 0.5, plus one
    # background detection scored lowest: tp tp tp tp fp. By hand: recall reaches 1 at
    # precision 1, so both APs are 1; a rule needing IoU > 0.5 gives 0 (all five false).
    gt = {str(i): truth([HALF_GT]) for i in range(4)}
    dets = [(str(i), 0.9 - 0.1 * i, HALF_DET) for i in range(4)] + [("0", 0.1, BACKGROUND)]
    result = evaluate(dets, gt)
    assert result["ap_07"] == 1.0 and result["ap"] == 1.0 and result["recall"] == 1.0
    assert result["ap"] == devkit_ap(dets, gt, False)
    assert result["ap_07"] == pytest.approx(devkit_ap(dets, gt, True))  # its sum of p / 11


def test_a_difficult_object_matched_at_exactly_half_ignores_the_detection():
    # The detection's best box is difficult at IoU 0.5: ignored, not a false positive, so the
    # later hit keeps precision 1 (AP 1). Counted as a false positive it would be AP 1/2.
    gt = {"a": truth([HALF_GT, [300, 300, 340, 340]], [True, False])}
    dets = [("a", 0.9, HALF_DET), ("a", 0.8, [300, 300, 340, 340])]
    result = evaluate(dets, gt)
    assert result["ap"] == 1.0 and result["ap_07"] == 1.0 and result["positives"] == 1
    assert result["ap"] == devkit_ap(dets, gt, False)


def test_a_detection_overlapping_no_box_is_false_even_at_threshold_zero():
    gt = {"c": truth([[0, 0, 10, 10]])}
    ids, scores, boxes = ["c"], np.array([0.9]), np.array([[20, 20, 30, 30]], float)
    assert evaluate_class(ids, scores, boxes, gt, iou_threshold=0.0)["recall"] == 0.0


def test_voc_ap_area_and_11_point_on_a_curve():
    recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(recall, precision) == pytest.approx(0.75)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 0.5) / 11)


def devkit_ap(dets, gt, use_07):
    """A literal transcription of the devkit's VOCevaldet.m on 1-based inclusive coordinates:
    only boxes that intersect the detection are measured, the first of equal overlaps wins,
    and a match needs ``ovmax >= minoverlap``."""
    npos = sum(int((~g.difficult).sum()) for g in gt.values())
    found = {k: [False] * len(g.boxes) for k, g in gt.items()}
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for d, i in enumerate(order):
        image, _, (x1, y1, x2, y2) = dets[i]
        bb = [x1 + 1, y1 + 1, x2, y2]  # to VOC pixels
        g = gt[image]
        ovmax, jmax = -np.inf, None
        for j, (gx1, gy1, gx2, gy2) in enumerate(g.boxes + np.array([1, 1, 0, 0])):
            iw = min(bb[2], gx2) - max(bb[0], gx1) + 1
            ih = min(bb[3], gy2) - max(bb[1], gy1) + 1
            if iw > 0 and ih > 0:
                ua = (
                    (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                    + (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
                    - iw * ih
                )
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= 0.5:
            if not g.difficult[jmax]:
                if not found[image][jmax]:
                    tp[d], found[image][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return sum((prec[rec >= t].max() if (rec >= t).any() else 0) / 11.0
                   for t in np.arange(0.0, 1.1, 0.1))  # fmt: skip
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_devkit_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    gt, dets = {}, []
    for image in range(6):
        n = int(rng.integers(0, 4))
        xy = rng.integers(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(10, 40, (n, 2))], axis=1)
        gt[str(image)] = truth(boxes, rng.random(n) < 0.2)
        for box in boxes:  # jittered hits, some twice, plus random boxes
            for _ in range(int(rng.integers(0, 3))):
                jitter = box + rng.integers(-6, 7, 4)
                dets.append((str(image), float(rng.random()), jitter.tolist()))
        for _ in range(int(rng.integers(0, 4))):
            xy = rng.integers(0, 100, 2)
            dets.append((str(image), float(rng.random()), [*xy, *(xy + rng.integers(5, 30, 2))]))
    ours = evaluate(dets, gt)
    if ours["positives"] == 0:
        pytest.skip("no positives drawn")
    assert ours["ap_07"] == pytest.approx(devkit_ap(dets, gt, True))
    assert ours["ap"] == pytest.approx(devkit_ap(dets, gt, False))


def test_a_class_without_objects_has_no_ap():
    result = evaluate([("a", 0.9, HIT_A1)], {"a": truth([[10, 10, 50, 40]], [True])})
    assert result["positives"] == 0 and np.isnan(result["ap"]) and np.isnan(result["ap_07"])


def test_a_stricter_overlap_needs_tighter_boxes():
    gt = {"c": truth([[0, 0, 10, 10]])}
    loose = [("c", 0.9, [0, 0, 10, 16])]  # IoU 10/16 = 0.625
    assert evaluate(loose, gt)["recall"] == 1.0
    ids, scores, boxes = ["c"], np.array([0.9]), np.array([[0, 0, 10, 16]], float)
    assert evaluate_class(ids, scores, boxes, gt, iou_threshold=0.7)["recall"] == 0.0
