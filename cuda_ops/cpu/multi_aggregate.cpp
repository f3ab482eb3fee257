// Fused CPU kernel of metaprune::multi_aggregate: PyG's [mean, std, max, min] aggregation
// of messages factor_i * y_ij, from per-node statistics of y (see multi_aggregate_op.py).
//
// Plain C++17 behind a C ABI, loaded with ctypes (cuda_ops/native.py). Per row m (a node
// in one direction) and channel c, with n = max(count_m, 1):
//   mean = f * s / n;  std = sqrt(max(f^2 * (q / n - (s / n)^2), eps)), 0 if <= sqrt(eps);
//   max / min = f * hi and f * lo, swapped where f < 0 (lo = -neg).
#include <cmath>
#include <cstdint>

namespace {

// What forward and backward both need at (row, channel): the factor, mean and variance of
// y, the clamped message variance and its square root.
template <typename T>
struct Moments {
  T f, mean_y, var_y, v, sd;
  bool clamped;  // v < eps: torch's clamp passes no gradient there
  Moments(const T* s, T n, T fc, int64_t H, int64_t c, T eps) : f(fc) {
    mean_y = s[c] / n;
    var_y = s[H + c] / n - mean_y * mean_y;
    v = fc * fc * var_y;
    clamped = !(v >= eps);
    v = v > eps ? v : eps;
    sd = std::sqrt(v);
  }
};

template <typename T>
void forward(const T* __restrict__ stats, const T* __restrict__ counts,
             const T* __restrict__ factor, int64_t M, int64_t H, T eps, T floor,
             T* __restrict__ out) {
  for (int64_t m = 0; m < M; ++m) {
    const T* s = stats + 4 * H * m;
    const T* f = factor + H * m;
    T* o = out + 4 * H * m;
    const T n = counts[m] > T(1) ? counts[m] : T(1);
#pragma GCC ivdep
    for (int64_t c = 0; c < H; ++c) {
      const Moments<T> mo(s, n, f[c], H, c, eps);
      const T fc = mo.f;
      const T top = fc * s[2 * H + c], bottom = fc * -s[3 * H + c];
      o[c] = fc * mo.mean_y;
      o[H + c] = mo.sd <= floor ? T(0) : mo.sd;
      o[2 * H + c] = fc >= T(0) ? top : bottom;
      o[3 * H + c] = fc >= T(0) ? bottom : top;
    }
  }
}

template <typename T>
void backward(const T* __restrict__ stats, const T* __restrict__ counts,
              const T* __restrict__ factor, const T* __restrict__ grad, int64_t M, int64_t H,
              T eps, T floor, T* __restrict__ d_stats, T* __restrict__ d_factor) {
  for (int64_t m = 0; m < M; ++m) {
    const T* s = stats + 4 * H * m;
    const T* f = factor + H * m;
    const T* g = grad + 4 * H * m;
    T* ds = d_stats + 4 * H * m;
    T* df = d_factor + H * m;
    const T n = counts[m] > T(1) ? counts[m] : T(1);
#pragma GCC ivdep
    for (int64_t c = 0; c < H; ++c) {
      const Moments<T> mo(s, n, f[c], H, c, eps);
      const T fc = mo.f, mean_y = mo.mean_y, var_y = mo.var_y;
      // d std / d v, zero where the value was floored or clamped
      const T g_v = (mo.sd <= floor || mo.clamped) ? T(0) : g[H + c] * T(0.5) / mo.sd;
      const T g_var = g_v * (fc * fc);
      const T g_mean_y = g[c] * fc - T(2) * mean_y * g_var;
      const bool pos = fc >= T(0);
      const T g_hi_f = pos ? g[2 * H + c] : g[3 * H + c];  // gradient reaching f * hi
      const T g_lo_f = pos ? g[3 * H + c] : g[2 * H + c];  // ... and f * lo
      const T hi = s[2 * H + c], lo = -s[3 * H + c];
      ds[c] = g_mean_y / n;
      ds[H + c] = g_var / n;
      ds[2 * H + c] = g_hi_f * fc;
      ds[3 * H + c] = -(g_lo_f * fc);
      df[c] = g[c] * mean_y + g_v * (T(2) * fc * var_y) + g_hi_f * hi + g_lo_f * lo;
    }
  }
}

}  // namespace

extern "C" {

int metaprune_abi_version() { return 1; }

void multi_aggregate_forward_f32(const float* stats, const float* counts, const float* factor,
                                 int64_t M, int64_t H, double eps, double floor, float* out) {
  forward<float>(stats, counts, factor, M, H, float(eps), float(floor), out);
}

void multi_aggregate_forward_f64(const double* stats, const double* counts, const double* factor,
                                 int64_t M, int64_t H, double eps, double floor, double* out) {
  forward<double>(stats, counts, factor, M, H, eps, floor, out);
}

void multi_aggregate_backward_f32(const float* stats, const float* counts, const float* factor,
                                  const float* grad, int64_t M, int64_t H, double eps,
                                  double floor, float* d_stats, float* d_factor) {
  backward<float>(stats, counts, factor, grad, M, H, float(eps), float(floor), d_stats, d_factor);
}

void multi_aggregate_backward_f64(const double* stats, const double* counts,
                                  const double* factor, const double* grad, int64_t M, int64_t H,
                                  double eps, double floor, double* d_stats, double* d_factor) {
  backward<double>(stats, counts, factor, grad, M, H, eps, floor, d_stats, d_factor);
}

}  // extern "C"
