// Fused CPU kernel of metaprune::meta_blocks: both message directions and the edge update
// of every dense block of a metanetwork layer in one pass over the edge states.
//
// Plain C++17 with a C ABI (no torch headers: it compiles in about a second and is loaded
// with ctypes). cuda_ops/meta_blocks.py documents the op; this file only computes it.
//
// Layout. Edge states e [E, H]: each block's edges are contiguous, out-major, block b's
// row r (output node out_b + r) holding in_b / groups_b edges to the inputs of its group.
// Node factors xab [N, 3H] = [x | a | b]. Statistics [N, 4, H] = [sum, sum of squares,
// max, -min] of y = e * x_src per receiving node (fwd: along edges, into output nodes;
// rev: along flipped edges, into input nodes); nodes without edges get 0 everywhere.
// Block table [B, 6] int64: edge offset, out offset, out size, in offset, in size, groups.
//
// Threads (OpenMP). Rows (b, r) are split into contiguous ranges of about equal edge
// counts; each thread accumulates node-side results into private buffers (thread 0 into
// the outputs), summed / maxed into the outputs at the end. Results do not depend on the
// thread count up to float rounding of those merges.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

struct Block {
  int64_t edge, out, out_size, in, in_size, groups;
  int64_t in_g() const { return in_size / groups; }
  int64_t out_g() const { return out_size / groups; }
};

std::vector<Block> read_table(const int64_t* table, int64_t num_blocks) {
  std::vector<Block> blocks(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t* t = table + 6 * b;
    blocks[b] = Block{t[0], t[1], t[2], t[3], t[4], t[5]};
  }
  return blocks;
}

// Calls fn(thread, block, row) for the rows of thread `t` of `threads`, balanced by edges.
template <typename Fn>
void for_rows(const std::vector<Block>& blocks, int64_t t, int64_t threads, Fn&& fn) {
  int64_t total = 0;
  for (const Block& b : blocks) total += b.out_size * b.in_g();
  int64_t seen = 0;
  for (size_t k = 0; k < blocks.size(); ++k) {
    const Block& b = blocks[k];
    const int64_t in_g = b.in_g();
    for (int64_t r = 0; r < b.out_size; ++r, seen += in_g) {
      if (total > 0 && (seen * threads) / total != t) continue;
      fn(b, r);
    }
  }
}

// Runs work(t) for t = 0 .. threads-1 on OpenMP threads. Built with -fopenmp, the library
// needs libgomp.so.1, which in a torch process is torch's own: the kernel shares torch's
// thread pool instead of competing with its spinning workers for the cores.
template <typename Work>
void run_threads(int64_t threads, Work&& work) {
  if (threads <= 1) {
    work(0);
    return;
  }
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int64_t t = 0; t < threads; ++t) work(t);
}

template <typename T>
inline T maxv(T a, T b) { return a > b ? a : b; }

template <typename T>
void init_stats(T* s, int64_t n, int64_t H) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < n; ++k) {
    T* p = s + 4 * H * k;
    std::fill(p, p + 2 * H, T(0));
    std::fill(p + 2 * H, p + 4 * H, ninf);
  }
}

// into += from, for [N, 4, H] statistics (sums add, extrema take the max)
template <typename T>
void merge_stats(T* __restrict__ into, const T* __restrict__ from, int64_t n, int64_t H) {
  for (int64_t k = 0; k < n; ++k) {
    T* p = into + 4 * H * k;
    const T* q = from + 4 * H * k;
    for (int64_t c = 0; c < 2 * H; ++c) p[c] += q[c];
    for (int64_t c = 2 * H; c < 4 * H; ++c) p[c] = maxv(p[c], q[c]);
  }
}

// HC > 0: the hidden size as a compile-time constant (fully unrolled channel loops without
// aliasing checks), HC = 0: any size.
template <typename T, int HC>
void forward(const T* __restrict__ e, const T* __restrict__ xab, const int64_t* table,
             int64_t num_blocks, int64_t N, int64_t H_, T* __restrict__ fwd,
             T* __restrict__ rev, T* __restrict__ e_new, int64_t threads) {
  const int64_t H = HC > 0 ? HC : H_;
  const std::vector<Block> blocks = read_table(table, num_blocks);
  const int64_t S = 4 * H, X = 3 * H;
  std::vector<std::vector<T>> priv(2 * (threads - 1));
  run_threads(threads, [&](int64_t t) {
    T* f = fwd;
    T* rv = rev;
    if (t > 0) {
      priv[2 * (t - 1)].resize(N * S);
      priv[2 * (t - 1) + 1].resize(N * S);
      f = priv[2 * (t - 1)].data();
      rv = priv[2 * (t - 1) + 1].data();
    }
    init_stats(f, N, H);
    init_stats(rv, N, H);
    std::vector<T> acc(S);
    for_rows(blocks, t, threads, [&](const Block& b, int64_t r) {
      const int64_t in_g = b.in_g(), g = r / b.out_g(), O = b.out + r;
      const T* xd = xab + O * X;
      const T* ad = xd + H;
      const T* bd = xd + 2 * H;
      T* as = acc.data();
      T* aq = as + H;
      T* am = as + 2 * H;
      T* an = as + 3 * H;
      std::copy(f + O * S, f + O * S + S, as);  // accumulate on top of earlier blocks
      for (int64_t i = 0; i < in_g; ++i) {
        const int64_t I = b.in + g * in_g + i, edge = b.edge + r * in_g + i;
        const T* ev = e + edge * H;
        T* en = e_new + edge * H;
        const T* xs = xab + I * X;
        const T* sa = xs + H;
        const T* sb = xs + 2 * H;
        T* rs = rv + I * S;
        T* rq = rs + H;
        T* rm = rs + 2 * H;
        T* rn = rs + 3 * H;
#pragma GCC ivdep
        for (int64_t c = 0; c < H; ++c) {
          const T v = ev[c];
          const T y = v * xs[c];
          as[c] += y;
          aq[c] += y * y;
          am[c] = maxv(am[c], y);
          an[c] = maxv(an[c], -y);
          const T yr = v * xd[c];
          rs[c] += yr;
          rq[c] += yr * yr;
          rm[c] = maxv(rm[c], yr);
          rn[c] = maxv(rn[c], -yr);
          en[c] = v + v * (sa[c] * bd[c] + ad[c] * sb[c]);
        }
      }
      std::copy(as, as + S, f + O * S);
    });
  });
  for (int64_t t = 1; t < threads; ++t) {
    merge_stats(fwd, priv[2 * (t - 1)].data(), N, H);
    merge_stats(rev, priv[2 * (t - 1) + 1].data(), N, H);
  }
  // nodes without incoming edges: 0 for all four statistics (PyG's convention)
  std::vector<char> has_fwd(N, 0), has_rev(N, 0);
  for (const Block& b : blocks) {
    if (b.in_g() == 0) continue;
    std::fill(has_fwd.begin() + b.out, has_fwd.begin() + b.out + b.out_size, 1);
    if (b.out_g() > 0) std::fill(has_rev.begin() + b.in, has_rev.begin() + b.in + b.in_size, 1);
  }
  for (int64_t n = 0; n < N; ++n) {
    if (!has_fwd[n]) std::fill(fwd + n * S, fwd + n * S + S, T(0));
    if (!has_rev[n]) std::fill(rev + n * S, rev + n * S + S, T(0));
  }
}

// Per node: [g_sum, 2 g_sq, g_max / ties(max), g_negmin / ties(min)], ties counted in `ties`.
template <typename T>
void scaled_grads(const T* g, const T* ties, int64_t N, int64_t H, T* out) {
  for (int64_t n = 0; n < N; ++n) {
    const T* gn = g + 4 * H * n;
    const T* tn = ties + 2 * H * n;
    T* o = out + 4 * H * n;
    for (int64_t c = 0; c < H; ++c) {
      o[c] = gn[c];
      o[H + c] = 2 * gn[H + c];
      o[2 * H + c] = tn[c] > 0 ? gn[2 * H + c] / tn[c] : T(0);
      o[3 * H + c] = tn[H + c] > 0 ? gn[3 * H + c] / tn[H + c] : T(0);
    }
  }
}

template <typename T, int HC>
void backward(const T* __restrict__ e, const T* __restrict__ xab, const int64_t* table,
              int64_t num_blocks, int64_t N, int64_t H_, const T* fwd, const T* rev,
              const T* g_fwd, const T* g_rev, const T* __restrict__ g_e, T* __restrict__ de,
              T* __restrict__ dxab, int64_t threads) {
  const int64_t H = HC > 0 ? HC : H_;
  const std::vector<Block> blocks = read_table(table, num_blocks);
  const int64_t S = 4 * H, X = 3 * H;

  // Pass 1: how many edges attain each node's max and min (the gradient of an extremum is
  // split evenly between ties, as autograd's amax does).
  std::vector<std::vector<T>> ties(2 * threads);  // [fwd, rev] per thread: [N, 2, H]
  run_threads(threads, [&](int64_t t) {
    std::vector<T>& tf = ties[2 * t];
    std::vector<T>& tr = ties[2 * t + 1];
    tf.assign(N * 2 * H, T(0));
    tr.assign(N * 2 * H, T(0));
    for_rows(blocks, t, threads, [&](const Block& b, int64_t r) {
      const int64_t in_g = b.in_g(), g = r / b.out_g(), O = b.out + r;
      const T* xd = xab + O * X;
      const T* fm = fwd + O * S + 2 * H;
      const T* fn = fm + H;
      T* cm = tf.data() + O * 2 * H;
      T* cn = cm + H;
      for (int64_t i = 0; i < in_g; ++i) {
        const int64_t I = b.in + g * in_g + i;
        const T* ev = e + (b.edge + r * in_g + i) * H;
        const T* xs = xab + I * X;
        const T* rm = rev + I * S + 2 * H;
        const T* rn = rm + H;
        T* crm = tr.data() + I * 2 * H;
        T* crn = crm + H;
#pragma GCC ivdep
        for (int64_t c = 0; c < H; ++c) {
          const T y = ev[c] * xs[c], yr = ev[c] * xd[c];
          cm[c] += T(y == fm[c]);
          cn[c] += T(-y == fn[c]);
          crm[c] += T(yr == rm[c]);
          crn[c] += T(-yr == rn[c]);
        }
      }
    });
  });
  for (int64_t t = 1; t < threads; ++t)
    for (int k = 0; k < 2; ++k)
      for (int64_t j = 0; j < N * 2 * H; ++j) ties[k][j] += ties[2 * t + k][j];
  std::vector<T> sf(N * S), sr(N * S);
  scaled_grads(g_fwd, ties[0].data(), N, H, sf.data());
  scaled_grads(g_rev, ties[1].data(), N, H, sr.data());

  // Pass 2: dL/dy of both directions, recomputing y; then de and the node-factor grads.
  std::vector<std::vector<T>> priv(threads - 1);
  run_threads(threads, [&](int64_t t) {
    T* dx = dxab;
    if (t > 0) {
      priv[t - 1].assign(N * X, T(0));
      dx = priv[t - 1].data();
    } else {
      std::fill(dxab, dxab + N * X, T(0));
    }
    for_rows(blocks, t, threads, [&](const Block& b, int64_t r) {
      const int64_t in_g = b.in_g(), g = r / b.out_g(), O = b.out + r;
      const T* xd = xab + O * X;
      const T* ad = xd + H;
      const T* bd = xd + 2 * H;
      const T* F = sf.data() + O * S;  // scaled grads of the output node
      const T* fm = fwd + O * S + 2 * H;
      const T* fn = fm + H;
      T* dxd = dx + O * X;
      T* dad = dxd + H;
      T* dbd = dxd + 2 * H;
      for (int64_t i = 0; i < in_g; ++i) {
        const int64_t I = b.in + g * in_g + i, edge = b.edge + r * in_g + i;
        const T* ev = e + edge * H;
        const T* ge = g_e + edge * H;
        T* dev = de + edge * H;
        const T* xs = xab + I * X;
        const T* sa = xs + H;
        const T* sb = xs + 2 * H;
        const T* R = sr.data() + I * S;
        const T* rm = rev + I * S + 2 * H;
        const T* rn = rm + H;
        T* dxs = dx + I * X;
        T* das = dxs + H;
        T* dbs = dxs + 2 * H;
#pragma GCC ivdep
        for (int64_t c = 0; c < H; ++c) {
          const T v = ev[c];
          const T y = v * xs[c], yr = v * xd[c];
          T dy = F[c] + y * F[H + c];
          dy += (y == fm[c] ? F[2 * H + c] : T(0)) - (-y == fn[c] ? F[3 * H + c] : T(0));
          T dyr = R[c] + yr * R[H + c];
          dyr += (yr == rm[c] ? R[2 * H + c] : T(0)) - (-yr == rn[c] ? R[3 * H + c] : T(0));
          const T gc = ge[c], gv = gc * v;
          dev[c] = dy * xs[c] + dyr * xd[c] + gc * (T(1) + (sa[c] * bd[c] + ad[c] * sb[c]));
          dxs[c] += dy * v;
          dxd[c] += dyr * v;
          das[c] += gv * bd[c];
          dbs[c] += gv * ad[c];
          dad[c] += gv * sb[c];
          dbd[c] += gv * sa[c];
        }
      }
    });
  });
  for (int64_t t = 1; t < threads; ++t) {
    const T* p = priv[t - 1].data();
    for (int64_t j = 0; j < N * X; ++j) dxab[j] += p[j];
  }
}

template <typename T>
void forward_any(const T* e, const T* xab, const int64_t* table, int64_t num_blocks, int64_t N,
                 int64_t H, T* fwd, T* rev, T* e_new, int64_t threads) {
  switch (H) {
    case 16: return forward<T, 16>(e, xab, table, num_blocks, N, H, fwd, rev, e_new, threads);
    case 32: return forward<T, 32>(e, xab, table, num_blocks, N, H, fwd, rev, e_new, threads);
    case 64: return forward<T, 64>(e, xab, table, num_blocks, N, H, fwd, rev, e_new, threads);
    default: return forward<T, 0>(e, xab, table, num_blocks, N, H, fwd, rev, e_new, threads);
  }
}

template <typename T>
void backward_any(const T* e, const T* xab, const int64_t* table, int64_t num_blocks, int64_t N,
                  int64_t H, const T* fwd, const T* rev, const T* g_fwd, const T* g_rev,
                  const T* g_e, T* de, T* dxab, int64_t threads) {
#define METAPRUNE_BACKWARD(HC) \
  backward<T, HC>(e, xab, table, num_blocks, N, H, fwd, rev, g_fwd, g_rev, g_e, de, dxab, threads)
  switch (H) {
    case 16: return METAPRUNE_BACKWARD(16);
    case 32: return METAPRUNE_BACKWARD(32);
    case 64: return METAPRUNE_BACKWARD(64);
    default: return METAPRUNE_BACKWARD(0);
  }
#undef METAPRUNE_BACKWARD
}

}  // namespace

extern "C" {

int metaprune_abi_version() { return 1; }

void meta_blocks_forward_f32(const float* e, const float* xab, const int64_t* table,
                             int64_t num_blocks, int64_t N, int64_t H, float* fwd, float* rev,
                             float* e_new, int64_t threads) {
  forward_any<float>(e, xab, table, num_blocks, N, H, fwd, rev, e_new, threads);
}

void meta_blocks_forward_f64(const double* e, const double* xab, const int64_t* table,
                             int64_t num_blocks, int64_t N, int64_t H, double* fwd, double* rev,
                             double* e_new, int64_t threads) {
  forward_any<double>(e, xab, table, num_blocks, N, H, fwd, rev, e_new, threads);
}

void meta_blocks_backward_f32(const float* e, const float* xab, const int64_t* table,
                              int64_t num_blocks, int64_t N, int64_t H, const float* fwd,
                              const float* rev, const float* g_fwd, const float* g_rev,
                              const float* g_e, float* de, float* dxab, int64_t threads) {
  backward_any<float>(e, xab, table, num_blocks, N, H, fwd, rev, g_fwd, g_rev, g_e, de, dxab, threads);
}

void meta_blocks_backward_f64(const double* e, const double* xab, const int64_t* table,
                              int64_t num_blocks, int64_t N, int64_t H, const double* fwd,
                              const double* rev, const double* g_fwd, const double* g_rev,
                              const double* g_e, double* de, double* dxab, int64_t threads) {
  backward_any<double>(e, xab, table, num_blocks, N, H, fwd, rev, g_fwd, g_rev, g_e, de, dxab,
                   threads);
}

}  // extern "C"
