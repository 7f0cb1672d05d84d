// The Python module modelsec_fast._C: importing it loads this library, whose
// static initialisers register the CPU (and CUDA) kernels of the
// torch.ops.modelsec_fast ops; its one function reports the build facts.
//
// Written against CPython's limited API (abi3) and, for the kernels, the
// LibTorch stable ABI, so one binary serves every CPython >= 3.10 and every
// torch from the stable-ABI target version on (MSF_TORCH_TARGET).
#define Py_LIMITED_API 0x030A0000
#include <Python.h>

#include <string>

#include "common/spec_constants.h"
#include "cpu/kernels.h"

#ifndef MSF_TORCH_BUILD_VERSION
#error "CMakeLists.txt passes MSF_TORCH_BUILD_VERSION and MSF_TORCH_TARGET"
#endif

#define MSF_STR2(x) #x
#define MSF_STR(x) MSF_STR2(x)

namespace {

std::string build_info_json() {
#if defined(MSF_WITH_CUDA)
  const char* cuda = "true";
#else
  const char* cuda = "false";
#endif
  // Constants as their source text from reference.py, so Python reads back the exact value.
  return std::string("{\"cuda\": ") + cuda +
         ", \"torch_version\": \"" MSF_TORCH_BUILD_VERSION "\""
         ", \"torch_abi_target\": \"" MSF_TORCH_TARGET "\""
         ", \"secure_rng\": true"
         ", \"cpu_isa\": \"" + msf::cpu::kernels().isa + "\""
         ", \"clip_eps\": " MSF_STR(MSF_CLIP_EPS) "}";
}

PyObject* build_info(PyObject* /*self*/, PyObject* /*unused*/) {
  const std::string json = build_info_json();
  return PyUnicode_FromStringAndSize(json.data(), Py_ssize_t(json.size()));
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "Build facts as a JSON object: cuda (bool), torch_version (the torch built against), "
     "torch_abi_target (the oldest torch it runs with), secure_rng (bool), cpu_isa (str), "
     "clip_eps (float)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "modelsec_fast native kernels", -1,
                          methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
