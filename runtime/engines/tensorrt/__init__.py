"""The TensorRT engine (moved into a package; split into modules next)."""

from .engine import (  # noqa: F401
    TensorRtEngine,
    build_options_for_key,
    build_with_trtexec,
    choose_cuda,
    engine_cache_key,
    engine_file_name,
    find_trtexec,
    load_or_build,
    open_cuda,
    parse_trtexec_output,
    trtexec_benchmark_command,
    trtexec_command,
    validate_options,
    write_atomic,
)
