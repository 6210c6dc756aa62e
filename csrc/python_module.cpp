// The Python module ntm_engine._C: loading it registers the ntm ops; build_info() says how
// this copy was compiled.
#include <torch/extension.h>

#include <ATen/cpu/vec/vec.h>

#define NTM_STR2(x) #x
#define NTM_STR(x) NTM_STR2(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ntm_engine compiled kernels (the ops live in torch.ops.ntm)";
  m.def("build_info", [] {
    pybind11::dict info;
#ifdef NTM_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
#ifdef CPU_CAPABILITY
    info["cpu_capability"] = NTM_STR(CPU_CAPABILITY);
#else
    info["cpu_capability"] = "DEFAULT";
#endif
    info["vector_width_float32"] = at::vec::Vectorized<float>::size();
    return info;
  });
}
