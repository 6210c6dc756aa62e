// The Python module ntm_engine._C: loading it registers the ntm ops; build_info() says how
// this copy was compiled and which CPU kernels run; set_cpu_capability() overrides the choice;
// input_copy_count() / reset_input_copy_count() expose ntm::input_copy_counter(), and
// last_parallel_chunks() how many threads the last CPU kernel ran on.
#include "cpu/cpu_ops.h"
#include "ntm/input_copies.h"

#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ntm_engine compiled kernels (the ops live in torch.ops.ntm)";
  m.def("build_info", [] {
    pybind11::dict info;
#ifdef NTM_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    const std::string chosen = ntm::cpu::current_capability();
    info["cpu_capability"] = chosen;
    info["cpu_capabilities_compiled"] = ntm::cpu::compiled_capabilities();
    info["cpu_capabilities_supported"] = ntm::cpu::supported_capabilities();
    // float32 lanes of the chosen kernels' vectors (at::vec: 8 for default and avx2, 16 for avx512)
    info["vector_width_float32"] = chosen == "avx512" ? 16 : 8;
    return info;
  });
  m.def("set_cpu_capability", &ntm::cpu::set_capability, pybind11::arg("name"),
        "Run the CPU kernels of capability `name` ('default', 'avx2' or 'avx512').");
  m.def("last_parallel_chunks", [] { return ntm::cpu::last_parallel_chunks().load(); },
        "Chunks (threads) the last CPU kernel's parallel section was split into.");
  m.def("input_copy_count", [] { return ntm::input_copy_counter().load(); },
        "Op inputs copied so far because their rows were not contiguous.");
  m.def("reset_input_copy_count", [] { ntm::input_copy_counter().store(0); },
        "Set input_copy_count() back to 0.");
}
