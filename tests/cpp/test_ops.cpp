// Native test of the ntm ops through the dispatcher, against ATen formulas in double.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const bool ok = std::isfinite(err) && err <= tol;
  std::printf("%s %s: max abs error %.3g (tol %.3g)\n", ok ? "PASS" : "FAIL", what.c_str(), err, tol);
  if (!ok) ++failures;
}

template <typename Sig>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using Coupling = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, std::optional<double>);
using Nll = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

}  // namespace

int main() {
  at::manual_seed(0);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({5, 1023}, opts), shift = at::randn({5, 1023}, opts),
                   logits = at::randn({5, 1023}, opts);
  const double clamp = 1.5;
  const at::Tensor s = clamp * at::tanh(logits / clamp);

  auto [y, logdet] = op<Coupling>("ntm::affine_coupling").call(x, shift, logits, clamp);
  expect_close(y, x * at::exp(s) + shift, 1e-12, "affine_coupling y");
  expect_close(logdet, s.sum(1), 1e-10, "affine_coupling logdet");

  auto [x_back, logdet_inv] = op<Coupling>("ntm::affine_coupling_inverse").call(y, shift, logits, clamp);
  expect_close(x_back, x, 1e-12, "inverse(forward(x)) == x");
  expect_close(logdet_inv, -logdet, 1e-10, "inverse logdet == -forward logdet");

  const at::Tensor nll = op<Nll>("ntm::gaussian_nll").call(x, shift, logits);
  const at::Tensor z = (x - shift) * at::exp(-logits);
  expect_close(nll, (0.5 * z * z + logits).sum(1), 1e-9, "gaussian_nll");

  bool threw = false;
  try {
    op<Coupling>("ntm::affine_coupling").call(x, shift.narrow(1, 0, 7), logits, clamp);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("'shift' must have the shape of 'x'") != std::string::npos;
  }
  std::printf("%s shape mismatch raises a clear error\n", threw ? "PASS" : "FAIL");
  if (!threw) ++failures;

  std::printf("%d passed, %d failed\n", 6 - failures, failures);
  return failures == 0 ? 0 : 1;
}
