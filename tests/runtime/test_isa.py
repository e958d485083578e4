"""The x86 INT8 weight scheme follows the CPU: 8-bit with VNNI/AMX, 7-bit otherwise (runtime/isa.py), read from a
/proc/cpuinfo laid out as on each CPU; the x86-ort build, the agent's warning and `devices check` use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.runtime.isa import isa_facts, saturation_warning, x86_weight_scheme

FLAGS = {
    # a Sapphire Rapids Xeon (AMX), an Ice Lake Xeon (AVX512-VNNI), an Alder Lake core (AVX-VNNI), an EPYC 7003
    # (AVX2 only) and a Skylake-SP Xeon (AVX-512 without VNNI)
    "sapphire": "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8",
    "icelake": "fpu sse2 avx2 avx512f avx512bw avx512_vnni",
    "alderlake": "fpu sse2 avx2 avx_vnni",
    "epyc": "fpu sse2 avx2 fma bmi2",
    "skylake": "fpu sse2 avx2 avx512f avx512bw",
}


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    processor = f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: test\nflags\t\t: {flags}\n\n"
    path.write_text(processor + processor.replace(": 0", ": 1"))
    return str(path)


@pytest.mark.parametrize(
    ("cpu", "weights", "vnni"),
    [
        ("sapphire", "int8_per_channel", "amx_int8"),
        ("icelake", "int8_per_channel", "avx512_vnni"),
        ("alderlake", "int8_per_channel", "avx_vnni"),
        ("epyc", "int7_per_channel", None),
        ("skylake", "int7_per_channel", None),
    ],
)
def test_weights_follow_the_cpus_dot_product_instructions(tmp_path, cpu, weights, vnni) -> None:
    facts = isa_facts(_cpuinfo(tmp_path, FLAGS[cpu]), machine="x86_64")
    assert facts["x86_weights"] == weights and facts["vnni"] == vnni
    assert x86_weight_scheme(set(FLAGS[cpu].split())) == weights
    assert (saturation_warning("int8_per_channel", facts) is None) == (vnni is not None)
    assert saturation_warning("int7_per_channel", facts) is None


def test_arm_and_unreadable_cpuinfo_have_no_x86_facts(tmp_path) -> None:
    assert isa_facts(_cpuinfo(tmp_path, "fp asimd asimddp"), machine="aarch64") is None
    assert isa_facts(str(tmp_path / "missing"), machine="x86_64") is None


def test_x86_ort_isa_option_picks_the_weights_and_says_when_they_do_not_fit(tmp_path) -> None:
    from edgekit import build
    from edgekit.calibration.calibrate import calibrate
    from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
    from edgekit.model import Model
    from edgekit.targets import BuildError, get_target

    images, _ = preprocessed_heldout_digits(16)
    target = get_target("x86-ort")
    assert target.calibration_schemes(target.make_options({"isa": "avx2"}, "int8"))[1] == "int7_per_channel"
    assert target.calibration_schemes(target.make_options({"isa": "vnni"}, "int8"))[1] == "int8_per_channel"
    vnni = {"isa": "vnni"}
    built = build(digits_model_path(), "x86-ort", tmp_path / "a", precision="int8", calib=images, options=vnni)
    assert built.manifest["quantization"]["scheme"]["weights"] == "int8_per_channel"
    # an 8-bit spec built for AVX2 devices is written, and the manifest says why it may not hold there
    model = Model.load(digits_model_path())
    spec = calibrate(model, images, weights="int8_per_channel", progress=False).spec
    avx2 = target.build(model, tmp_path / "b", precision="int8", quant_spec=spec, options={"isa": "avx2"})
    assert any("isa=avx2" in note["what"] for note in avx2.manifest["not_honoured"])
    with pytest.raises(BuildError, match="isa=sse"):
        target.make_options({"isa": "sse"}, "int8")


def test_the_agent_warns_when_8bit_weights_meet_a_cpu_without_vnni(tmp_path) -> None:
    from edgekit.runtime.agent import _isa_warning

    manifest = {"engine": "onnxruntime", "quantization": {"scheme": {"weights": "int8_per_channel"}}}
    result = {"warnings": [], "device": {"isa": isa_facts(_cpuinfo(tmp_path, FLAGS["epyc"]), machine="x86_64")}}
    _isa_warning(manifest, result)
    assert len(result["warnings"]) == 1 and "-O isa=avx2" in result["warnings"][0]
    result = {"warnings": [], "device": {"isa": isa_facts(_cpuinfo(tmp_path, FLAGS["icelake"]), machine="x86_64")}}
    _isa_warning(manifest, result)
    assert result["warnings"] == []


def test_devices_check_names_the_weights_each_device_takes() -> None:
    from edgekit.cli.fleet import _int8_weights

    assert _int8_weights({"isa.x86_weights": "int8_per_channel", "isa.vnni": "amx_int8"}) == "8-bit (amx_int8)"
    assert _int8_weights({"isa.x86_weights": "int7_per_channel", "isa.vnni": None}) == "7-bit (no VNNI)"
    assert _int8_weights({"machine": "aarch64"}) == "-"
