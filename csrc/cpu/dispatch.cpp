// Run-time choice of the CPU kernels, as ATen's CPU_CAPABILITY dispatch does: the kernels in
// csrc/cpu/kernels/ are compiled once per capability (the build defines NTM_CPU_HAVE_AVX2 /
// NTM_CPU_HAVE_AVX512 when it compiled those variants), and the ops call the variant chosen
// from cpuid.  This file itself is compiled for the baseline ISA, so it runs on any x86-64.
#include "cpu/cpu_ops.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>

namespace ntm::cpu {

// The per-capability kernels (defined in csrc/cpu/kernels/, one namespace per compilation).
namespace DEFAULT {
#include "ntm/op_signatures.inc"
#include "ntm/cpu_only_signatures.inc"
}
#ifdef NTM_CPU_HAVE_AVX2
namespace AVX2 {
#include "ntm/op_signatures.inc"
#include "ntm/cpu_only_signatures.inc"
}
#endif
#ifdef NTM_CPU_HAVE_AVX512
namespace AVX512 {
#include "ntm/op_signatures.inc"
#include "ntm/cpu_only_signatures.inc"
}
#endif

namespace {

struct KernelTable {
  decltype(&DEFAULT::affine_coupling) affine_coupling;
  decltype(&DEFAULT::affine_coupling_inverse) affine_coupling_inverse;
  decltype(&DEFAULT::affine_coupling_backward) affine_coupling_backward;
  decltype(&DEFAULT::gaussian_nll) gaussian_nll;
  decltype(&DEFAULT::gaussian_nll_backward) gaussian_nll_backward;
  decltype(&DEFAULT::autoregressive_decode) autoregressive_decode;
};

#define NTM_KERNEL_TABLE(ns)                                                              \
  KernelTable {                                                                           \
    &ns::affine_coupling, &ns::affine_coupling_inverse, &ns::affine_coupling_backward,    \
        &ns::gaussian_nll, &ns::gaussian_nll_backward, &ns::autoregressive_decode         \
  }

enum Level : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2, kLevels = 3 };
constexpr std::array<const char*, kLevels> kNames = {"default", "avx2", "avx512"};

const KernelTable* table_of(int level) {
  static const KernelTable kDefaultTable = NTM_KERNEL_TABLE(DEFAULT);
#ifdef NTM_CPU_HAVE_AVX2
  static const KernelTable kAvx2Table = NTM_KERNEL_TABLE(AVX2);
  if (level == kAvx2) return &kAvx2Table;
#endif
#ifdef NTM_CPU_HAVE_AVX512
  static const KernelTable kAvx512Table = NTM_KERNEL_TABLE(AVX512);
  if (level == kAvx512) return &kAvx512Table;
#endif
  return level == kDefault ? &kDefaultTable : nullptr;
}

// What the CPU (and the OS, which must save the wider registers) can run; the flag sets match
// the compiler options of each variant (setup.py, CMakeLists.txt).
bool cpu_supports(int level) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (level == kAvx2) return avx2;
  if (level == kAvx512)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  return level == kDefault;
}

bool usable(int level) { return table_of(level) != nullptr && cpu_supports(level); }

int best_usable(int at_most) {
  for (int level = at_most; level > kDefault; --level)
    if (usable(level)) return level;
  return kDefault;
}

int parse(const std::string& name, const char* what) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (int level = 0; level < kLevels; ++level)
    if (lower == kNames[level]) return level;
  TORCH_CHECK_VALUE(false, what, " must be one of 'default', 'avx2', 'avx512', got '", name, "'");
}

std::atomic<int> g_level{-1};

int current_level() {
  int level = g_level.load(std::memory_order_relaxed);
  if (level >= 0) return level;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("NTM_CPU_CAPABILITY");
    const int wanted =
        env != nullptr && *env != '\0' ? parse(env, "environment variable NTM_CPU_CAPABILITY")
                                       : kAvx512;
    int expected = -1;
    g_level.compare_exchange_strong(expected, best_usable(wanted));
  });
  return g_level.load(std::memory_order_relaxed);
}

const KernelTable& kernels() { return *table_of(current_level()); }

}  // namespace

std::vector<std::string> compiled_capabilities() {
  std::vector<std::string> out;
  for (int level = 0; level < kLevels; ++level)
    if (table_of(level) != nullptr) out.emplace_back(kNames[level]);
  return out;
}

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> out;
  for (int level = 0; level < kLevels; ++level)
    if (usable(level)) out.emplace_back(kNames[level]);
  return out;
}

std::atomic<int64_t>& last_parallel_chunks() {
  static std::atomic<int64_t> chunks{0};
  return chunks;
}

std::string current_capability() { return kNames[current_level()]; }

void set_capability(const std::string& name) {
  const int level = parse(name, "ntm: CPU capability");
  TORCH_CHECK_VALUE(table_of(level) != nullptr, "ntm: CPU capability '", kNames[level],
                    "' was not compiled into this build (compiled: ",
                    c10::Join(", ", compiled_capabilities()), ")");
  TORCH_CHECK_VALUE(cpu_supports(level), "ntm: CPU capability '", kNames[level],
                    "' is not supported by this CPU (supported: ",
                    c10::Join(", ", supported_capabilities()), ")");
  current_level();  // settle the environment's choice first, so it cannot overwrite this one
  g_level.store(level, std::memory_order_relaxed);
}

std::tuple<at::Tensor, at::Tensor> affine_coupling(const at::Tensor& x, const at::Tensor& shift,
                                                   const at::Tensor& scale_logits,
                                                   std::optional<double> clamp) {
  return kernels().affine_coupling(x, shift, scale_logits, clamp);
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_inverse(const at::Tensor& y,
                                                           const at::Tensor& shift,
                                                           const at::Tensor& scale_logits,
                                                           std::optional<double> clamp) {
  return kernels().affine_coupling_inverse(y, shift, scale_logits, clamp);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_coupling_backward(
    const at::Tensor& y, const at::Tensor& shift, const at::Tensor& scale_logits,
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_logdet,
    std::optional<double> clamp, bool need_x, bool need_grad_shift) {
  return kernels().affine_coupling_backward(y, shift, scale_logits, grad_y, grad_logdet, clamp,
                                            need_x, need_grad_shift);
}

at::Tensor gaussian_nll(const at::Tensor& u, const at::Tensor& mean,
                        const at::Tensor& log_sigma) {
  return kernels().gaussian_nll(u, mean, log_sigma);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_nll_backward(
    const at::Tensor& u, const at::Tensor& mean, const at::Tensor& log_sigma,
    const at::Tensor& grad) {
  return kernels().gaussian_nll_backward(u, mean, log_sigma, grad);
}

std::tuple<at::Tensor, at::Tensor> autoregressive_decode(
    const at::Tensor& y, at::TensorList params, const std::optional<at::Tensor>& modulation,
    int64_t heads, std::optional<double> clamp) {
  return kernels().autoregressive_decode(y, params, modulation, heads, clamp);
}

}  // namespace ntm::cpu
