// CPU kernel of autoregressive_decode: the exact token-by-token inverse of one
// AutoregressiveFlowBlock (ntm_engine/nn/autoregressive.py; its Python twin is
// ntm_engine/reference.py:autoregressive_decode) in one call.  The Python loop pays a dispatcher
// and allocator round trip for each of the ~40 small ops of a token step; here every buffer
// (activations, KV cache) is allocated once per call, attention over the cache and the element
// maths are plain loops over raw pointers, and only the matrix products go through ATen
// (addmm_out into the preallocated buffers).  Samples are independent, so the batch is split
// into one chunk of rows per thread and each thread decodes its rows on its own.
// Compiled once per CPU capability (csrc/cpu/dispatch.cpp), into ntm::cpu::CPU_CAPABILITY.
#include "cpu/parallel.h"
#include "ntm/decode_checks.h"
#include "ntm/acc_type.h"
#include "ntm/element_math.h"
#include "ntm/op_io.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <mutex>
#include <vector>

namespace ntm::cpu::CPU_CAPABILITY {

#include "ntm/cpu_only_signatures.inc"

namespace {

using at::vec::Vectorized;

// The matrices of one Transformer layer, transposed once per call ([in, out] views) so that
// addmm_out reads them as they are stored.
struct LayerMatrices {
  at::Tensor qkv_t, qkv_b, proj_t, proj_b, fc1_t, fc1_b, fc2_t, fc2_b;
};

// Per-thread buffers for `rows` samples; the caches hold keys transposed ([r, head, d, L]:
// the scores of one query are a contiguous sweep over positions) and values as they come
// ([r, head, L, d]: the weighted sum is a sweep over features).
struct ChunkBuffers {
  at::Tensor h, a, qkv, att, tmp, hidden, head, emb;
  std::vector<at::Tensor> keys_t, values;
};

// out[r, :] = LN(in[r, :]) * (1 + scale[r, :]) + shift[r, :]  (no affine; eps as nn.LayerNorm);
// scale/shift null: plain LN.
template <typename T>
void norm_modulate(const T* in, T* out, int64_t rows, int64_t W, const T* shift, const T* scale,
                   int64_t mod_stride) {
  using acc = acc_type<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = in + r * W;
    T* y = out + r * W;
    acc mean = 0;
    for (int64_t c = 0; c < W; ++c) mean += x[c];
    mean /= W;
    acc var = 0;
    for (int64_t c = 0; c < W; ++c) var += (x[c] - mean) * (x[c] - mean);
    const acc rstd = acc(1) / std::sqrt(var / W + acc(1e-5));
    if (shift == nullptr) {
      for (int64_t c = 0; c < W; ++c) y[c] = static_cast<T>((x[c] - mean) * rstd);
    } else {
      const T* sh = shift + r * mod_stride;
      const T* sc = scale + r * mod_stride;
      for (int64_t c = 0; c < W; ++c)
        y[c] = static_cast<T>((x[c] - mean) * rstd * (acc(1) + sc[c]) + sh[c]);
    }
  }
}

// s[0:n] <- exp(scale * s - max(scale * s)) on SIMD lanes; returns their sum (the softmax's
// denominator, applied by the caller to the weighted sum of values).
template <typename T>
T softmax_inplace(T* s, int64_t n, T scale) {
  using Vec = Vectorized<T>;
  const int64_t vec_end = n - n % Vec::size();
  const Vec vscale(scale);
  T top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) top = std::max(top, s[j]);
  top *= scale;   // scale > 0: the max of the scaled scores
  const Vec vtop(top);
  Vec vsum(T(0));
  for (int64_t j = 0; j < vec_end; j += Vec::size()) {
    const Vec e = ntm_exp(Vec::loadu(s + j) * vscale - vtop);
    e.store(s + j);
    vsum = vsum + e;
  }
  T lanes[Vec::size()];
  vsum.store(lanes);
  T total = 0;
  for (int64_t i = 0; i < Vec::size(); ++i) total += lanes[i];
  for (int64_t j = vec_end; j < n; ++j) {
    s[j] = ntm_exp(s[j] * scale - top);
    total += s[j];
  }
  return total;
}

// Appends position `pos`'s keys and values (from qkv [rows, 3W]) to the caches, then
// att[r, head*d:(head+1)*d] = softmax(q k^T / sqrt(d)) v over positions 0..pos.
template <typename T>
void attend(const T* qkv, T* keys_t, T* values, T* att, int64_t rows, int64_t heads, int64_t d,
            int64_t L, int64_t pos, std::vector<T>& scores) {
  using acc = acc_type<T>;
  const int64_t W = heads * d, n = pos + 1;
  const acc scale = acc(1) / std::sqrt(static_cast<acc>(d));
  for (int64_t r = 0; r < rows; ++r) {
    const T* q_row = qkv + r * 3 * W;
    for (int64_t hd = 0; hd < heads; ++hd) {
      const T* q = q_row + hd * d;
      const T* k_new = q_row + W + hd * d;
      const T* v_new = q_row + 2 * W + hd * d;
      T* kt = keys_t + (r * heads + hd) * d * L;
      T* v = values + (r * heads + hd) * L * d;
      for (int64_t c = 0; c < d; ++c) kt[c * L + pos] = k_new[c];
      std::copy(v_new, v_new + d, v + pos * d);
      T* s = scores.data();
      std::fill(s, s + n, T(0));
      for (int64_t c = 0; c < d; ++c) {
        const T qc = q[c];
        const T* krow = kt + c * L;
        for (int64_t j = 0; j < n; ++j) s[j] += qc * krow[j];
      }
      const T total = softmax_inplace(s, n, static_cast<T>(scale));
      T* o = att + r * W + hd * d;
      std::fill(o, o + d, T(0));
      for (int64_t j = 0; j < n; ++j) {
        const T p = s[j];
        const T* vj = v + j * d;
        for (int64_t c = 0; c < d; ++c) o[c] += p * vj[c];
      }
      const T inv = T(1) / total;
      for (int64_t c = 0; c < d; ++c) o[c] *= inv;
    }
  }
}

template <typename T>
void add_into(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// Exact erf GELU (nn.GELU's default) on SIMD lanes.
template <typename T>
void gelu_inplace(T* x, int64_t n) {
  using Vec = Vectorized<T>;
  const Vec half(T(0.5)), one(T(1)), inv_sqrt2(T(M_SQRT1_2));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(x + i);
    (half * v * (one + (v * inv_sqrt2).erf())).store(x + i);
  }
  for (; i < n; ++i) x[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(M_SQRT1_2)));
}

template <typename T>
void decode_rows(const DecodeIO& io, const std::vector<LayerMatrices>& layers,
                 const at::Tensor& embed_t, const at::Tensor& out_t, int64_t r0, int64_t r1) {
  using acc = acc_type<T>;
  // grad mode is thread-local: the pool's threads would otherwise reach autograd (and refuse
  // addmm_out on parameters that require grad)
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t R = r1 - r0, L = io.tokens, P = io.patch, W = io.width, H = io.hidden;
  const int64_t heads = io.heads, d = W / heads, depth = io.depth;
  const auto opts = io.y.options();
  ChunkBuffers buf{at::empty({R, W}, opts), at::empty({R, W}, opts),
                   at::empty({R, 3 * W}, opts), at::empty({R, W}, opts),
                   at::empty({R, W}, opts), at::empty({R, H}, opts),
                   at::empty({R, 2 * P}, opts), at::empty({R, W}, opts), {}, {}};
  for (int64_t l = 0; l < depth; ++l) {
    buf.keys_t.push_back(at::empty({R, heads, d, L}, opts));
    buf.values.push_back(at::empty({R, heads, L, d}, opts));
  }
  std::vector<T> scores(L);
  const ClampParams<acc> cp = clamp_params<acc>(io.clamp);
  const T* y = io.y.const_data_ptr<T>() + r0 * L * P;
  T* x = io.x.mutable_data_ptr<T>() + r0 * L * P;
  acc* logdet = io.logdet.mutable_data_ptr<acc>() + r0;
  std::fill(logdet, logdet + R, acc(0));
  const T* start = io.start.const_data_ptr<T>();
  const T* pos_emb = io.pos.const_data_ptr<T>();
  const T* mod = io.modulation.defined() ? io.modulation.const_data_ptr<T>() : nullptr;
  const int64_t B = io.y.size(0);
  // modulation [depth, 4, B, W]: (shift1, scale1, shift2, scale2) of layer l for row r
  auto mod_at = [&](int64_t l, int64_t k) { return mod + ((l * 4 + k) * B + r0) * W; };
  T* h = buf.h.mutable_data_ptr<T>();
  T* a = buf.a.mutable_data_ptr<T>();
  T* tmp = buf.tmp.mutable_data_ptr<T>();
  T* hidden = buf.hidden.mutable_data_ptr<T>();
  const T* head = buf.head.const_data_ptr<T>();
  const at::Tensor prev = io.x.narrow(0, r0, R);  // [R, L, P]; token i-1 feeds token i

  for (int64_t i = 0; i < L; ++i) {
    if (i == 0) {
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < W; ++c) h[r * W + c] = start[c] + pos_emb[c];
    } else {
      at::addmm_out(buf.emb, io.embed_b, prev.select(1, i - 1), embed_t);
      const T* e = buf.emb.const_data_ptr<T>();
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < W; ++c) h[r * W + c] = e[r * W + c] + pos_emb[i * W + c];
    }
    for (int64_t l = 0; l < depth; ++l) {
      const LayerMatrices& m = layers[l];
      norm_modulate<T>(h, a, R, W, mod ? mod_at(l, 0) : nullptr, mod ? mod_at(l, 1) : nullptr, W);
      at::addmm_out(buf.qkv, m.qkv_b, buf.a, m.qkv_t);
      attend<T>(buf.qkv.const_data_ptr<T>(), buf.keys_t[l].mutable_data_ptr<T>(),
                buf.values[l].mutable_data_ptr<T>(), buf.att.mutable_data_ptr<T>(), R, heads, d,
                L, i, scores);
      at::addmm_out(buf.tmp, m.proj_b, buf.att, m.proj_t);
      add_into(h, tmp, R * W);
      norm_modulate<T>(h, a, R, W, mod ? mod_at(l, 2) : nullptr, mod ? mod_at(l, 3) : nullptr, W);
      at::addmm_out(buf.hidden, m.fc1_b, buf.a, m.fc1_t);
      gelu_inplace(hidden, R * H);
      at::addmm_out(buf.tmp, m.fc2_b, buf.hidden, m.fc2_t);
      add_into(h, tmp, R * W);
    }
    norm_modulate<T>(h, a, R, W, nullptr, nullptr, W);
    at::addmm_out(buf.head, io.out_b, buf.a, out_t);
    for (int64_t r = 0; r < R; ++r) {
      const T* row = head + r * 2 * P;
      acc sum = 0;
      for (int64_t p = 0; p < P; ++p) {
        const acc s = soft_clamp<acc>(static_cast<acc>(row[P + p]), cp);
        const int64_t at_ = (r * L + i) * P + p;
        x[at_] = static_cast<T>(coupling_inverse<acc>(static_cast<acc>(y[at_]),
                                                      static_cast<acc>(row[p]), s));
        sum += s;
      }
      logdet[r] -= sum;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> autoregressive_decode(
    const at::Tensor& y, at::TensorList params, const std::optional<at::Tensor>& modulation,
    int64_t heads, std::optional<double> clamp) {
  const DecodeIO io = prepare_decode(y, params, modulation, heads, clamp);
  std::vector<LayerMatrices> layers;
  for (int64_t l = 0; l < io.depth; ++l) {
    const at::Tensor* p = params.data() + kDecodeHeadParams + l * kDecodeLayerParams;
    layers.push_back({p[0].t(), p[1], p[2].t(), p[3], p[4].t(), p[5], p[6].t(), p[7]});
  }
  const at::Tensor embed_t = io.embed_w.t(), out_t = io.out_w.t();
  const int64_t B = y.size(0);
  if (B == 0 || io.tokens == 0) return {io.x, io.logdet};
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grain = (B + threads - 1) / threads;
  std::mutex failure_lock;
  std::exception_ptr failure;  // parallel_for's body must not throw: rethrown here
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "autoregressive_decode", [&] {
    parallel_for(0, B, grain, [&](int64_t r0, int64_t r1) {
      try {
        decode_rows<scalar_t>(io, layers, embed_t, out_t, r0, r1);
      } catch (...) {
        const std::lock_guard<std::mutex> guard(failure_lock);
        if (!failure) failure = std::current_exception();
      }
    });
  });
  if (failure) std::rethrow_exception(failure);
  return {io.x, io.logdet};
}

}  // namespace ntm::cpu::CPU_CAPABILITY
