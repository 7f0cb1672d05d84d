// pybind11 module modelsec_fast._C: build facts. Importing it also loads the
// op registrations compiled into the same library.
#include <pybind11/pybind11.h>

#include "cpu/kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "modelsec_fast native ops: build facts";
  m.def("build_info", []() {
    py::dict d;
#if defined(MSF_WITH_CUDA)
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["torch_version"] = MSF_TORCH_VERSION;
    d["secure_rng"] = true;  // ChaCha20 keyed from getrandom(2) / /dev/urandom
    d["cpu_isa"] = msf::cpu::kernels().isa;
    return d;
  }, "Dict of build facts: cuda (bool), torch_version (str), secure_rng (bool), cpu_isa (str).");
}
