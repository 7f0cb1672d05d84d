// Every op of the library, declared in one place. Backends add kernels with
// TORCH_LIBRARY_IMPL (csrc/cpu/ops_cpu.cpp, csrc/cuda/register_cuda.cpp); the
// Python wrappers, fake kernels and the specification live in
// modelsec_fast/ops.py, modelsec_fast/_native.py and modelsec_fast/reference.py.
//
// Noise ops take the stream explicitly (seed, offset: Philox key and block
// offset; source: 0 Philox, 1 ChaCha20 keyed from the OS inside the kernel) so
// they are functional for torch.compile and opcheck.
#include <torch/library.h>

TORCH_LIBRARY(modelsec_fast, m) {
  m.def("clip_and_noise(Tensor[] grads, float max_norm, float noise_std, float scale, int seed, "
        "int offset, int source) -> (Tensor[], Tensor)");
  m.def("accumulate_and_noise(Tensor[] grads, Tensor factors, float noise_std, float scale, "
        "int seed, int offset, int source) -> Tensor[]");
  m.def("add_noise_(Tensor(a!)[] tensors, float noise_std, float scale, int seed, int offset, "
        "int source) -> ()");
  m.def("sign_step(Tensor x_adv, Tensor grad, Tensor x_orig, float alpha, float eps, float lo, "
        "float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> Tensor");
  m.def("sign_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_orig, float alpha, float eps, "
        "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");
  m.def("l2_step(Tensor x_adv, Tensor grad, Tensor x_orig, float alpha, float eps, float lo, "
        "float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> Tensor");
  // Test hook: fills `out` (float32, 1-D) with the raw normals of a stream;
  // `key` (8 words) is used for source 1 so tests can compare with the reference.
  m.def("_fill_normals_(Tensor(a!) out, int seed, int offset, int tensor_index, int source, "
        "int[] key) -> ()");
}
