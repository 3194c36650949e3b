"""Tests for the batched device augmentation (aalr_ray.data.device_augment) and
Data's ``augment_on``: same distribution as the per-example path (chi-square
tests with power), deterministic batches, every example once, exact resume.

All on the CPU (augment_on="device" forces the batched path there). The
statistical checks use fixed seeds, so they are deterministic; their
p-values (two-sample chi-square, scipy) are checked against ALPHA = 1e-3.
"""
import io

import numpy as np
import pytest
import torch
from scipy import stats

from aalr_ray.data import AUGMENT_PLACES, Data, DataError, DatasetSpec, load_dataset
from aalr_ray.data import batching, device_augment
from aalr_ray.data.augment import CROP_PADDING, CUTOUT_LENGTH, ERASING_PROBABILITY, Augmenter
from aalr_ray.data.batching import epoch_order
from aalr_ray.train import RunConfig, TrainingRun

ALPHA = 1e-3
AUGMENTED = ("standard", "cutout", "random-erasing")
TIMINGS = ("epoch_s", "eval_s")


def images_data(images: torch.Tensor, augmentation: str, augment_on: str, mean=None) -> Data:
    """A Data whose training split is ``images`` (uint8 or float), labels 0..9 repeating."""
    n, c, h, w = images.shape
    mean = tuple(mean or (0.5,) * c)
    labels = torch.arange(n) % 10
    spec = DatasetSpec("synthetic", 10, (c, h, w), mean, (0.25,) * c, n, 1)
    return Data(spec, (images, labels), (images[:1], labels[:1]), augmentation=augmentation,
                augmenter=Augmenter(augmentation, "synthetic", mean), num_workers=0, augment_on=augment_on)


def augment_all(images, augmentation, augment_on, seed=0, epoch=0, batch_size=500, mean=None):
    data = images_data(images, augmentation, augment_on, mean)
    return torch.cat([x for x, _ in data.batches("train", batch_size, seed=seed, epoch=epoch)])


def same_distribution(a, b) -> float:
    """p-value of the two-sample chi-square test that counts ``a`` and ``b`` (same bins) share a law.

    Bins with fewer than 10 counts in both samples together are pooled into
    one, so that no expected count is tiny.
    """
    table = np.array([a, b], dtype=np.float64)
    rare = table.sum(0) < 10
    table = table[:, ~rare] if not rare.any() else np.column_stack([table[:, ~rare], table[:, rare].sum(1)])
    table = table[:, table.sum(0) > 0]
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def uniform_fit(counts) -> float:
    """p-value of the chi-square goodness-of-fit test of ``counts`` against equal cells."""
    return float(stats.chisquare(np.asarray(counts, dtype=np.float64)).pvalue)


def digest(batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in batches]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- crop offsets and flips -------------------------------------------------------------
# 8x8 one-channel images whose pixel (i, j) is 1 + 8 i + j: every output pixel says
# which source pixel it is a copy of (0: padding), so offsets and flips read back exactly.

SIDE = 8
CROP_DRAWS = 8000  # 162 cells (9 x 9 offsets x 2 flips): ~49 per cell
OFFSETS = 2 * CROP_PADDING + 1


def coordinate_images(n: int) -> torch.Tensor:
    base = (1 + torch.arange(SIDE * SIDE)).to(torch.uint8).view(1, 1, SIDE, SIDE)
    return base.expand(n, 1, SIDE, SIDE).contiguous()


def read_crops(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row offset, column offset, flipped) of each augmented coordinate image; checks the image
    is exactly that crop + flip of the source."""
    k = torch.round(out[:, 0] * 255).long()  # (N, 8, 8): 1 + source index, 0 in the padding
    valid = k > 0
    first = valid.flatten(1).long().argmax(1)  # the top-left valid pixel: at least 4 x 4 are valid
    i0, j0 = first // SIDE, first % SIDE
    n = torch.arange(len(k))
    k0, k1 = k[n, i0, j0] - 1, k[n, i0, j0 + 1] - 1
    flipped = k1 % SIDE < k0 % SIDE
    dy = k0 // SIDE - i0
    dx = torch.where(flipped, k0 % SIDE - (SIDE - 1 - j0), k0 % SIDE - j0)
    # Rebuild every image from the three numbers: the decode is exact, or this fails.
    i = torch.arange(SIDE).view(1, SIDE, 1)
    j = torch.arange(SIDE).view(1, 1, SIDE)
    rows = i + dy.view(-1, 1, 1)
    cols = torch.where(flipped.view(-1, 1, 1), SIDE - 1 - j, j) + dx.view(-1, 1, 1)
    inside = (rows >= 0) & (rows < SIDE) & (cols >= 0) & (cols < SIDE)
    assert torch.equal(k, torch.where(inside, 1 + rows * SIDE + cols, 0))
    return dy, dx, flipped


def crop_counts(augment_on: str, seed: int = 0) -> np.ndarray:
    """Counts over the cells (row offset, column offset, flip), the offsets shifted to [0, 8]."""
    out = augment_all(coordinate_images(CROP_DRAWS), "standard", augment_on, seed=seed)
    dy, dx, flipped = read_crops(out)
    assert int(dy.abs().max()) <= CROP_PADDING and int(dx.abs().max()) <= CROP_PADDING
    cell = ((dy + CROP_PADDING) * OFFSETS + (dx + CROP_PADDING)) * 2 + flipped.long()
    return np.bincount(cell.numpy(), minlength=OFFSETS * OFFSETS * 2)


@pytest.fixture(scope="module")
def per_example_crops():
    return crop_counts("workers")


def test_crop_offsets_and_flips_match_the_per_example_path(per_example_crops):
    batched = crop_counts("device")
    assert batched.sum() == per_example_crops.sum() == CROP_DRAWS
    assert same_distribution(per_example_crops, batched) > ALPHA
    for counts in (per_example_crops, batched):  # both are uniform over the 162 cells
        assert uniform_fit(counts) > ALPHA
        flips = int(counts[1::2].sum())
        assert stats.binomtest(flips, CROP_DRAWS, 0.5).pvalue > ALPHA
    flip_counts = [[c[0::2].sum(), c[1::2].sum()] for c in (per_example_crops, batched)]
    assert same_distribution(*flip_counts) > ALPHA
    for axis in (0, 1):  # the row and column offset marginals, 9 values each
        marginal = [c.reshape(OFFSETS, OFFSETS, 2).sum(axis=(1 - axis, 2)) for c in (per_example_crops, batched)]
        assert same_distribution(*marginal) > ALPHA


def test_a_wrong_crop_range_fails_the_same_check(per_example_crops, monkeypatch):
    """The check has power: offsets in [-3, 3] instead of [-4, 4] are caught."""
    monkeypatch.setattr(device_augment, "CROP_PADDING", CROP_PADDING - 1)
    wrong = crop_counts("device")
    assert wrong.sum() == CROP_DRAWS
    assert same_distribution(per_example_crops, wrong) < ALPHA
    assert uniform_fit(wrong) < ALPHA


# --- cutout ---------------------------------------------------------------------------------
# 32x32 white images, fill 0.5: the patch is where the output is 0.5 (padding is 0).

CUTOUT_DRAWS = 4000


def cutout_stats(augment_on: str) -> dict[str, np.ndarray]:
    side, length = 32, CUTOUT_LENGTH["synthetic"]
    white = torch.full((CUTOUT_DRAWS, 1, side, side), 255, dtype=torch.uint8)
    patch = augment_all(white, "cutout", augment_on, seed=1)[:, 0] == 0.5
    rows, cols = patch.any(2), patch.any(1)  # (N, 32) each
    heights, widths = rows.sum(1), cols.sum(1)
    assert torch.equal(patch.flatten(1).sum(1), heights * widths)  # one rectangle per image
    assert int(heights.min()) >= length // 2 and int(heights.max()) == length
    centres = []
    for covered in (rows, cols):  # the centre is half a side in from the edge that is not clipped
        first = covered.long().argmax(1)
        last = side - 1 - covered.flip(1).long().argmax(1)
        centres.append(torch.where(last < side - 1, last + 1 - length // 2, first + length // 2))
    areas = (heights * widths).numpy()
    return {"centre_y": np.bincount(centres[0].numpy(), minlength=side),
            "centre_x": np.bincount(centres[1].numpy(), minlength=side),
            "area": np.bincount(areas, minlength=length * length + 1)}


def test_cutout_centres_and_areas_match_the_per_example_path():
    reference, batched = cutout_stats("workers"), cutout_stats("device")
    for what in ("centre_y", "centre_x", "area"):
        assert same_distribution(reference[what], batched[what]) > ALPHA, what
    for counts in (reference["centre_y"], reference["centre_x"], batched["centre_y"], batched["centre_x"]):
        assert counts.sum() == CUTOUT_DRAWS and uniform_fit(counts) > ALPHA


# --- random erasing ---------------------------------------------------------------------------
# 3x32x32 white images: erased pixels are neither 0 (padding) nor 1 (image) in some channel.

ERASING_DRAWS = 4000
AREA_EDGES = np.linspace(0.01, 0.43, 15)
ASPECT_EDGES = np.geomspace(0.25, 4.0, 13)
POSITION_EDGES = np.array([0.0, 0.25, 0.5, 0.75, 1.0 + 1e-9])


def erasing_stats(augment_on: str) -> dict[str, np.ndarray]:
    side = 32
    white = torch.full((ERASING_DRAWS, 3, side, side), 255, dtype=torch.uint8)
    out = augment_all(white, "random-erasing", augment_on, seed=2)
    erased = ((out != 0) & (out != 1)).any(1)  # (N, 32, 32)
    applied = erased.flatten(1).any(1)
    e = erased[applied]
    rows, cols = e.any(2), e.any(1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert torch.equal(e.flatten(1).sum(1), heights * widths)  # one rectangle per erased image
    tops, lefts = rows.long().argmax(1), cols.long().argmax(1)
    fraction = (heights * widths).double() / (side * side)
    aspect = heights.double() / widths.double()
    position = torch.cat([tops / (side - heights), lefts / (side - widths)]).numpy()
    return {"applied": np.array([int((~applied).sum()), int(applied.sum())]),
            "area": np.histogram(fraction.numpy(), AREA_EDGES)[0],
            "aspect": np.histogram(aspect.numpy(), ASPECT_EDGES)[0],
            "position": np.histogram(position, POSITION_EDGES)[0]}


@pytest.fixture(scope="module")
def per_example_erasing():
    return erasing_stats("workers")


def test_random_erasing_rate_area_aspect_and_position_match_the_per_example_path(per_example_erasing):
    reference, batched = per_example_erasing, erasing_stats("device")
    for what in ("applied", "area", "aspect", "position"):
        assert same_distribution(reference[what], batched[what]) > ALPHA, what
    for s in (reference, batched):
        applied = int(s["applied"][1])
        assert stats.binomtest(applied, ERASING_DRAWS, ERASING_PROBABILITY).pvalue > ALPHA
        assert s["area"].sum() == s["aspect"].sum() == applied  # nothing outside the bins
        assert s["position"].sum() == 2 * applied


def test_a_wrong_erasing_area_fails_the_same_check(per_example_erasing, monkeypatch):
    """The check has power: area fractions up to 0.3 instead of 0.4 are caught."""
    monkeypatch.setattr(device_augment, "ERASING_AREA", (0.02, 0.3))
    wrong = erasing_stats("device")
    assert same_distribution(per_example_erasing["area"], wrong["area"]) < ALPHA


# --- Data with augment_on="device" -----------------------------------------------------------------


@pytest.mark.parametrize("augmentation", AUGMENTED)
def test_device_batches_cover_the_epoch_once_as_float_in_range(augmentation):
    data = load_dataset("synthetic", augmentation=augmentation, train_limit=300, augment_on="device")
    _, y_train = data._splits["train"]
    batches = list(data.batches("train", 64, seed=4, epoch=3))
    assert len(batches) == data.num_batches("train", 64) == 5
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 44]
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 3, 32, 32)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, y_train[epoch_order(300, 4, 3, True)])
    plain = load_dataset("synthetic", train_limit=300)
    assert torch.equal(labels, torch.cat([y for _, y in plain.batches("train", 64, seed=4, epoch=3)]))


def test_device_batches_hold_the_examples_of_the_epoch_order():
    """Each image is one grey level, its index + 1: after the crop, its non-zero pixels name it."""
    n = 200
    images = (1 + torch.arange(n)).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    out = augment_all(images, "standard", "device", seed=5, epoch=2, batch_size=48)
    source = torch.round(out.flatten(1).max(1).values * 255).long() - 1
    assert torch.equal(source, epoch_order(n, 5, 2, True))


@pytest.mark.parametrize("augmentation", AUGMENTED)
def test_device_batches_are_a_function_of_seed_and_epoch(augmentation):
    def fresh():
        return load_dataset("synthetic", augmentation=augmentation, train_limit=200, augment_on="device")

    reference = digest(fresh().batches("train", 64, seed=7, epoch=2))
    assert_same_batches(digest(fresh().batches("train", 64, seed=7, epoch=2)), reference)
    for other in (dict(seed=7, epoch=3), dict(seed=8, epoch=2)):
        changed = digest(fresh().batches("train", 64, **other))
        assert not torch.equal(changed[0][0], reference[0][0])

    data = fresh()  # earlier calls with another batch size, an unfinished epoch, interleaved epochs
    first = data.batches("train", 37, seed=7, epoch=0)
    next(first)
    assert_same_batches(digest(data.batches("train", 64, seed=7, epoch=2)), reference)
    a, b = data.batches("train", 64, seed=7, epoch=2), data.batches("train", 64, seed=7, epoch=5)
    interleaved_a, interleaved_b = [], []
    for xa_ya, xb_yb in zip(a, b):
        interleaved_a.append(xa_ya)
        interleaved_b.append(xb_yb)
    assert_same_batches(interleaved_a, reference)
    assert_same_batches(interleaved_b, digest(fresh().batches("train", 64, seed=7, epoch=5)))


@pytest.mark.parametrize("augmentation", AUGMENTED)
def test_float_images_take_the_device_path_like_uint8(augmentation):
    images = random_images(100)
    as_bytes = augment_all(images, augmentation, "device", seed=3, batch_size=32)
    as_floats = augment_all(images.float() / 255.0, augmentation, "device", seed=3, batch_size=32)
    assert as_floats.dtype == torch.float32 and torch.equal(as_bytes, as_floats)


def random_images(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(torch.uint8)


def test_auto_on_a_cpu_is_the_per_example_path():
    images = random_images(128)

    def batches(augment_on):
        data = images_data(images, "cutout", augment_on)
        return digest(data.batches("train", 64, seed=1, epoch=1))

    auto = batches("auto")
    assert_same_batches(auto, batches("workers"))
    assert not torch.equal(auto[0][0], batches("device")[0][0])
    assert load_dataset("digits").augment_on == "auto"
    assert load_dataset("digits", augment_on="device").augment_on == "device"


def test_auto_on_an_accelerator_takes_the_device_path_when_the_split_fits(monkeypatch):
    images = random_images(100)
    split_bytes = 100 * 3 * 32 * 32 + 100 * 8  # uint8 images, int64 labels
    cuda = torch.device("cuda", 0)  # never touched: the free memory is made up
    for free, expected in ((4 * split_bytes + 4, True), (4 * split_bytes, False)):
        monkeypatch.setattr(batching, "free_device_memory", lambda device, free=free: free)
        fresh = images_data(images, "standard", "auto")
        assert fresh.augments_on_device(cuda) is expected
        monkeypatch.setattr(batching, "free_device_memory", lambda device: 0)
        assert fresh.augments_on_device(cuda) is expected  # decided once: a growing model does not switch it
    data = images_data(images, "standard", "auto")
    assert data.augments_on_device(torch.device("cpu")) is False
    assert data.augments_on_device(torch.device("mps")) is False  # nothing free (patched to 0)
    assert images_data(images, "standard", "workers").augments_on_device(cuda) is False
    assert images_data(images, "standard", "device").augments_on_device(torch.device("cpu")) is True


def test_a_bad_augment_on_is_one_line_naming_the_choices():
    assert AUGMENT_PLACES == ("auto", "device", "workers")
    data = load_dataset("synthetic", train_limit=10)
    attempts = (lambda: load_dataset("synthetic", augment_on="gpu"),
                lambda: Data(data.spec, data._splits["train"], data._splits["test"], augment_on="gpu"))
    for attempt in attempts:
        with pytest.raises(DataError) as info:
            attempt()
        msg = str(info.value)
        assert "\n" not in msg and "'gpu'" in msg and all(place in msg for place in AUGMENT_PLACES)
    with pytest.raises(ValueError) as info:
        RunConfig(model="small-cnn", dataset="synthetic", method="aalr", epochs=1, augment_on="gpu")
    assert "\n" not in str(info.value) and "'gpu'" in str(info.value)
    assert all(place in str(info.value) for place in AUGMENT_PLACES)


# --- a training run ------------------------------------------------------------------------------


def test_a_run_on_the_device_path_resumes_bit_for_bit():
    config = RunConfig(model="small-cnn", dataset="synthetic", method="aalr", epochs=2, batch_size=64,
                       augmentation="standard", augment_on="device", train_limit=128, test_limit=64,
                       device="cpu")

    def strip(row):
        return {k: v for k, v in row.items() if k not in TIMINGS}

    whole = TrainingRun(config)
    assert whole.data.augment_on == "device"
    expected = [strip(row) for row in whole]

    part = TrainingRun(config)
    assert strip(part.train_one_epoch()) == expected[0]
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["config"]["augment_on"] == "device"
    resumed = TrainingRun(config)
    resumed.load_state_dict(state)
    assert strip(resumed.train_one_epoch()) == expected[1]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)

    old = dict(state, config={k: v for k, v in state["config"].items() if k != "augment_on"})
    TrainingRun(RunConfig(**{**config.to_dict(), "augment_on": "auto"})).load_state_dict(old)
