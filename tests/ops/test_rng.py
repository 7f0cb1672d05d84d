"""The noise generators: known-answer tests and native-vs-reference streams."""

import math

import pytest
import torch

from modelsec_fast import reference
from tests.ops.conftest import requires_native


def _words(*vals):
    return torch.tensor(vals, dtype=torch.int64).reshape(-1, 1)


@pytest.mark.parametrize("counter, key, expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_reference_philox_matches_random123_known_answers(counter, key, expected):
    out = reference.philox4x32_10(_words(*counter), key).flatten().tolist()
    assert out == list(expected)


def test_reference_chacha20_matches_rfc8439_block_vector():
    key = [int.from_bytes(bytes(range(4 * i, 4 * i + 4)), "little") for i in range(8)]
    out = reference.chacha20_block(key, _words(1, 0x09000000, 0x4A000000, 0)).flatten().tolist()
    expected = [0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3, 0xC7F4D1C7, 0x0368C033,
                0x9AAA2204, 0x4E6CD4C3, 0x466482D2, 0x09AA9F07, 0x05D7C214, 0xA2028BD9,
                0xD19C12B5, 0xB94E16DE, 0xE883D0CB, 0x4E3C50A2]
    assert out == expected


# r at the smallest u, 2**-41: the support of the Philox normals (reference.py).
R_MAX = math.sqrt(82 * math.log(2))
# A 32-bit u (before the low byte of wf extended it) stopped at sqrt(66 ln 2) = 6.764.
OLD_CUTOFF = 6.77


def _radius(wu: int, low_byte: int) -> float:
    """r of the 40-bit uniform u = (wu * 2**8 + low_byte + 0.5) * 2**-40, in float64."""
    return math.sqrt(-2.0 * math.log((wu * 256 + low_byte + 0.5) * 2.0 ** -40))


def test_reference_normals_are_bounded_and_finite():
    z = reference.philox_normal(1 << 16, seed=99, offset=0, tensor_index=0)
    assert torch.isfinite(z).all() and z.abs().max() <= R_MAX * (1 + 1e-6)


def test_reference_box_muller_tail_uses_the_low_byte_of_wf():
    """wu = 0, wf = 0 reaches sqrt(82 ln 2) = 7.54; each low byte of wf moves u."""
    n = torch.arange(4 * 256)  # wu * 256 + low byte, for wu in 0..3
    wu, low = n // 256, n % 256
    # wf's top 24 bits are the angle: the four axes, where |z| = r.
    zs = [z for quarter in range(4) for z in reference.box_muller(wu, (quarter << 30) | low)]
    top = max(float(z.abs().max()) for z in zs)
    assert 7.5 < top <= R_MAX * (1 + 1e-6), top
    r = reference.box_muller(wu, low)[0]  # angle 0: z_a = r
    assert (r[1:] < r[:-1]).all(), "r must fall strictly as wu * 256 + low byte grows"
    expected = torch.tensor([_radius(a, b) for a, b in zip(wu.tolist(), low.tolist())],
                            dtype=torch.float64)
    torch.testing.assert_close(r.double(), expected, rtol=1e-6, atol=0)


def test_reference_box_muller_low_byte_leaves_the_angle_alone(random_seed):
    g = torch.Generator().manual_seed(random_seed)
    wu = torch.randint(2**32, (4096,), generator=g)
    angle_bits = torch.randint(2**24, (4096,), generator=g) << 8
    za, zb = reference.box_muller(wu, angle_bits)
    ya, yb = reference.box_muller(wu, angle_bits | torch.randint(256, (4096,), generator=g))
    # Same direction: (za, zb) and (ya, yb) are parallel.
    torch.testing.assert_close(za * yb - zb * ya, torch.zeros(4096), rtol=0, atol=1e-5)
    assert ((za * ya + zb * yb) >= 0).all()


@requires_native
@pytest.mark.parametrize("numel, seed, offset, index", [
    (1, 0, 0, 0), (7, 1, 3, 1), (4099, -5, 2**40, 7), (70001, 2**62 + 11, 123456789, 2**31 + 5),
])
def test_native_philox_stream_matches_reference(numel, seed, offset, index):
    out = torch.empty(numel)
    torch.ops.modelsec_fast._fill_normals_(out, seed, offset, index, 0, [])
    ref = reference.philox_normal(numel, seed, offset, index)
    # Same uniforms; log and sincos differ by a few fp32 ulp.
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)


# Philox blocks of tensor 0 whose word wu is 0, found by searching all 2**32
# blocks of these seeds: (seed, block, first word of the pair, low byte of wf).
TAIL_BLOCKS = [(33, 318391904, 0, 2), (29, 85456424, 0, 11), (16, 1111182894, 2, 23)]


@requires_native
@pytest.mark.parametrize("seed, block, word, low_byte", TAIL_BLOCKS)
def test_native_philox_tail_draws_beyond_the_32_bit_cutoff(seed, block, word, low_byte):
    counter = torch.tensor([[block], [0], [0], [reference.NOISE_DOMAIN]])
    words = reference.philox4x32_10(counter, (seed, 0)).flatten().tolist()
    assert words[word] == 0 and words[word + 1] & 0xFF == low_byte
    out = torch.empty(4)
    torch.ops.modelsec_fast._fill_normals_(out, seed, block, 0, 0, [])
    za, zb = out[word:word + 2].double().tolist()
    assert math.hypot(za, zb) == pytest.approx(_radius(0, low_byte), rel=2e-6)
    assert OLD_CUTOFF < max(abs(za), abs(zb)) <= R_MAX
    torch.testing.assert_close(out, reference.philox_normal(4, seed, block, 0), rtol=2e-6, atol=2e-6)


@requires_native
@pytest.mark.parametrize("numel, index", [(5, 0), (4096 + 3, 2)])
def test_native_chacha20_stream_matches_reference(numel, index):
    key = reference.secure_key()
    out = torch.empty(numel)
    torch.ops.modelsec_fast._fill_normals_(out, 0, 0, index, 1, key)
    torch.testing.assert_close(out, reference.chacha20_normal(numel, key, index), rtol=4e-6, atol=4e-6)


@requires_native
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_instruction_set_draws_the_same_stream(isa, tmp_path):
    """Each compiled variant (forced by MODELSEC_FAST_CPU_ISA) matches the reference."""
    import subprocess
    import sys
    code = ("import torch, modelsec_fast as m; from modelsec_fast import reference as R;"
            "m.ops.native_available(); o = torch.empty(999);"
            "torch.ops.modelsec_fast._fill_normals_(o, 42, 5, 1, 0, []);"
            "torch.testing.assert_close(o, R.philox_normal(999, 42, 5, 1), rtol=2e-6, atol=2e-6);"
            # A block whose normal z_a is -7.28 (see TAIL_BLOCKS): every variant draws the tail.
            "t = torch.empty(4); torch.ops.modelsec_fast._fill_normals_(t, 33, 318391904, 0, 0, []);"
            "torch.testing.assert_close(t, R.philox_normal(4, 33, 318391904, 0), rtol=2e-6, atol=2e-6);"
            "assert t[0] < -7.2, t;"
            "print(m._native.build_info()['cpu_isa'])")
    env = dict(__import__("os").environ, MODELSEC_FAST_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
