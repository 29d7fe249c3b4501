# Process-level settings that must be in place before Python starts (sourced by the scripts).
# glibc malloc: XLA allocates large scratch buffers every step; without these each step pays
# thousands of page faults returning memory to the OS and taking it back.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-1}
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1073741824}
export MALLOC_TOP_PAD_=${MALLOC_TOP_PAD_:-268435456}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# On a machine without a TPU (no PCI device of Google's vendor id) or NVIDIA GPU, JAX uses the
# CPU only: libtpu (installed for research.aot's compile-only TPU target) would otherwise be
# loaded by every JAX process, with warnings. research.aot loads it itself.
if ! grep -qs 0x1ae0 /sys/bus/pci/devices/*/vendor && [ ! -e /dev/nvidia0 ]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
fi
export ALLOW_MULTIPLE_LIBTPU_LOAD=${ALLOW_MULTIPLE_LIBTPU_LOAD:-1}
