// Fused alias-free resampling and filtered nonlinearity on the CPU, one image (H x W plane) at a time.
//
// Built at first use by afcore/cpu_kernel.py (g++ -O3, loaded through ctypes); afcore/fastops.py falls
// back to its PyTorch path when no compiler is present. The operations, for a plane x of H x W samples:
//
//   up(x)      = sum_r  colup_{a_r}( rowup_{b_r}(x) )        (H x W  -> fH x fW)
//   down(u)    = sum_r rowdown_{b_r}( coldown_{a_r}(u) )      (fH x fW -> H x W)
//
// i.e. a 2-D FIR written as a sum of R separable terms (R = 1 for a separable Kaiser sinc; a radial jinc kernel is
// passed as its singular value decomposition). In 1-D, with taps c[0..n) (gain included) and centre offset o:
//
//   up:   y[k] = sum_j c[k - f j + o] x[j]          (zero insertion and filtering in one, polyphase)
//   down: y[i] = sum_k c[f i - k + o] x[k]          (filter and keep every f-th sample, only those computed)
//
// with indices outside the plane wrapped (circular padding) or zero. The fused modes evaluate
//   forward:  y  = down( act(up_A x) )
//   backward: gx = down( act'(up_A x) * up_B g )      (the caller passes the adjoint filters as up_B / down)
// and keep the f^2-sized intermediate in a per-thread scratch buffer that stays in cache: one read of x (and g),
// one write of the result.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

enum Act { IDENTITY = 0, RELU = 1, LEAKY_RELU = 2, SILU = 3, GELU = 4, GELU_TANH = 5, TANH = 6, SIGMOID = 7 };

// exp for float that the compiler can vectorise (glibc's expf is only vectorised under -ffast-math): Cody-Waite
// range reduction x = k ln2 + r, |r| <= ln2/2, and a degree-6 polynomial for e^r (relative error ~2e-7).
#pragma omp declare simd notinbranch
static inline float fast_expf(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(k) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}
static inline double fast_exp(double x) { return std::exp(x); }
static inline float fast_exp(float x) { return fast_expf(x); }

template <typename T>
static inline T sigmoid(T u) { return T(1) / (T(1) + fast_exp(-u)); }

// y = act(u), in place
template <typename T>
void activate(T* u, int64_t n, int act, T param) {
  switch (act) {
    case IDENTITY: return;
    case RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = u[i] > T(0) ? u[i] : T(0);
      return;
    case LEAKY_RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = u[i] > T(0) ? u[i] : param * u[i];
      return;
    case SILU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = u[i] * sigmoid(u[i]);
      return;
    case SIGMOID:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = sigmoid(u[i]);
      return;
    case GELU:
      for (int64_t i = 0; i < n; ++i) u[i] = T(0.5) * u[i] * (T(1) + std::erf(u[i] * T(0.70710678118654752440)));
      return;
    case GELU_TANH: {
      const T c = T(0.79788456080286535588), a = T(0.044715);
      for (int64_t i = 0; i < n; ++i) u[i] = T(0.5) * u[i] * (T(1) + std::tanh(c * (u[i] + a * u[i] * u[i] * u[i])));
      return;
    }
    case TANH:
      for (int64_t i = 0; i < n; ++i) u[i] = std::tanh(u[i]);
      return;
  }
}

// u <- act'(u) * v
template <typename T>
void activate_grad(T* u, const T* v, int64_t n, int act, T param) {
  switch (act) {
    case IDENTITY:
      for (int64_t i = 0; i < n; ++i) u[i] = v[i];
      return;
    case RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = u[i] > T(0) ? v[i] : T(0);
      return;
    case LEAKY_RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) u[i] = u[i] > T(0) ? v[i] : param * v[i];
      return;
    case SILU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T s = sigmoid(u[i]);
        u[i] = v[i] * s * (T(1) + u[i] * (T(1) - s));
      }
      return;
    case SIGMOID:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T s = sigmoid(u[i]);
        u[i] = v[i] * s * (T(1) - s);
      }
      return;
    case GELU: {
      const T r2 = T(0.70710678118654752440), rpi = T(0.39894228040143267794);  // 1/sqrt(2), 1/sqrt(2 pi)
      for (int64_t i = 0; i < n; ++i) {
        const T x = u[i];
        u[i] = v[i] * (T(0.5) * (T(1) + std::erf(x * r2)) + x * rpi * std::exp(T(-0.5) * x * x));
      }
      return;
    }
    case GELU_TANH: {
      const T c = T(0.79788456080286535588), a = T(0.044715);
      for (int64_t i = 0; i < n; ++i) {
        const T x = u[i], t = std::tanh(c * (x + a * x * x * x));
        u[i] = v[i] * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * c * (T(1) + T(3) * a * x * x));
      }
      return;
    }
    case TANH:
      for (int64_t i = 0; i < n; ++i) {
        const T t = std::tanh(u[i]);
        u[i] = v[i] * (T(1) - t * t);
      }
      return;
  }
}

// Index i of an axis of length n after padding: wrapped (circular) or -1 (zeros, outside).
static inline int64_t pad_index(int64_t i, int64_t n, bool circular) {
  if (i >= 0 && i < n) return i;
  if (!circular) return -1;
  i %= n;
  return i < 0 ? i + n : i;
}

struct Filter {     // one separable term: column taps a (along H), row taps b (along W), both length n
  const double* a;
  const double* b;
};

struct Spec {       // a 2-D FIR as R separable terms
  int rank, n, offset, factor;
  const double* a;  // (rank, n)
  const double* b;  // (rank, n)
  Filter term(int r) const { return {a + r * n, b + r * n}; }
};

// Per-thread scratch memory (grows, never shrinks).
template <typename T>
struct Scratch {
  std::vector<T> row, phases, tmp, mid, big, big2;
};

// dst[0 .. n) += c src[0 .. n): every filter below is a sum of such shifted, scaled rows
template <typename T>
static inline void axpy(T* dst, const T* src, T c, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += c * src[i];
}

// y[0 .. f n) += up(x[0 .. n)) with taps c, one row.
template <typename T>
void row_up(const T* x, int64_t n, const Spec& s, const double* c, bool circular, T* y, Scratch<T>& w) {
  const int f = s.factor, nt = s.n, o = s.offset;
  const int64_t halo = nt / f + 2;
  w.row.resize(n + 2 * halo);
  T* xp = w.row.data() + halo;  // xp[q] for q in [-halo, n + halo)
  std::memcpy(xp, x, n * sizeof(T));
  for (int64_t q = 1; q <= halo; ++q) {  // only the borders need wrapping
    const int64_t lo = pad_index(-q, n, circular), hi = pad_index(n - 1 + q, n, circular);
    xp[-q] = lo < 0 ? T(0) : x[lo];
    xp[n - 1 + q] = hi < 0 ? T(0) : x[hi];
  }
  w.tmp.resize(n);
  T* acc = w.tmp.data();
  for (int p = 0; p < f; ++p) {
    std::fill(acc, acc + n, T(0));
    // t = f d + p + o in [0, nt)  ->  d in [ceil((-p-o)/f), floor((nt-1-p-o)/f)]
    for (int t = (p + o) % f; t < nt; t += f) {  // t = f d + p + o
      const int64_t d = (t - p - o) / f;
      const T cv = T(c[t]);
      const T* src = xp - d;
      axpy(acc, src, cv, n);
    }
    for (int64_t q = 0; q < n; ++q) y[f * q + p] += acc[q];
  }
}

// y[0 .. n) += down(x[0 .. f n)) with taps c, one row.
template <typename T>
void row_down(const T* x, int64_t n, const Spec& s, const double* c, bool circular, T* y, Scratch<T>& w) {
  const int f = s.factor, nt = s.n, o = s.offset;
  const int64_t m = f * n;
  // x index k = f i - t + o for t in [0, nt); pad by lo = nt - 1 - o on the left so that e = k + lo >= 0.
  const int64_t lo = std::max<int64_t>(nt - 1 - o, 0);
  const int64_t per_phase = n + (lo + o) / f + 2;
  w.phases.resize(f * per_phase);
  for (int p = 0; p < f; ++p) {  // phases[p][j] = xpad[f j + p], xpad[e] = x[e - lo]
    T* ph = w.phases.data() + p * per_phase;
    for (int64_t j = 0; j < per_phase; ++j) {
      const int64_t e = f * j + p - lo;
      if (e >= 0 && e < m) {
        ph[j] = x[e];
      } else {
        const int64_t i = pad_index(e, m, circular);
        ph[j] = i < 0 ? T(0) : x[i];
      }
    }
  }
  for (int t = 0; t < nt; ++t) {  // e = f i + (lo + o - t) = f (i + a) + b
    const int64_t r = lo + o - t, a = r / f, b = r % f;
    const T cv = T(c[t]);
    const T* src = w.phases.data() + b * per_phase + a;
    axpy(y, src, cv, n);
  }
}

// Y (f h, wy) += column up-sampling of X (h, wy) with taps c: Y[k] = sum_j c[k - f j + o] X[j].
template <typename T>
void col_up(const T* x, int64_t h, int64_t wy, const Spec& s, const double* c, bool circular, T* y) {
  const int f = s.factor, nt = s.n, o = s.offset;
  for (int64_t k = 0; k < f * h; ++k) {
    T* dst = y + k * wy;
    const int64_t p = k % f, q = k / f;
    for (int t = static_cast<int>((p + o) % f); t < nt; t += f) {
      const int64_t j = pad_index(q - (t - p - o) / f, h, circular);
      if (j < 0) continue;
      const T cv = T(c[t]);
      const T* src = x + j * wy;
      axpy(dst, src, cv, wy);
    }
  }
}

// Y (h, wy) += column down-sampling of X (f h, wy) with taps c: Y[i] = sum_t c[t] X[f i - t + o].
template <typename T>
void col_down(const T* x, int64_t h, int64_t wy, const Spec& s, const double* c, bool circular, T* y) {
  const int f = s.factor, nt = s.n, o = s.offset;
  for (int64_t i = 0; i < h; ++i) {
    T* dst = y + i * wy;
    for (int t = 0; t < nt; ++t) {
      const int64_t k = pad_index(f * i - t + o, f * h, circular);
      if (k < 0) continue;
      const T cv = T(c[t]);
      const T* src = x + k * wy;
      axpy(dst, src, cv, wy);
    }
  }
}

// out (f h, f w) = up(x (h, w))
template <typename T>
void plane_up(const T* x, int64_t h, int64_t w, const Spec& s, bool circular, T* out, Scratch<T>& sc) {
  const int f = s.factor;
  std::fill(out, out + f * h * f * w, T(0));
  sc.mid.resize(h * f * w);
  for (int r = 0; r < s.rank; ++r) {
    const Filter term = s.term(r);
    std::fill(sc.mid.begin(), sc.mid.end(), T(0));
    for (int64_t i = 0; i < h; ++i) row_up(x + i * w, w, s, term.b, circular, sc.mid.data() + i * f * w, sc);
    col_up(sc.mid.data(), h, f * w, s, term.a, circular, out);
  }
}

// out (h, w) = down(u (f h, f w))
template <typename T>
void plane_down(const T* u, int64_t h, int64_t w, const Spec& s, bool circular, T* out, Scratch<T>& sc) {
  const int f = s.factor;
  std::fill(out, out + h * w, T(0));
  sc.mid.resize(h * f * w);
  for (int r = 0; r < s.rank; ++r) {
    const Filter term = s.term(r);
    std::fill(sc.mid.begin(), sc.mid.end(), T(0));
    col_down(u, h, f * w, s, term.a, circular, sc.mid.data());
    for (int64_t i = 0; i < h; ++i) row_down(sc.mid.data() + i * f * w, w, s, term.b, circular, out + i * w, sc);
  }
}

enum Mode { UP = 0, DOWN = 1, FUSED = 2, FUSED_GRAD = 3 };

template <typename T>
void run(int mode, const T* x, const T* g, T* out, int64_t planes, int64_t h, int64_t w, const Spec& up_a,
         const Spec& up_b, const Spec& down, int circular, int act, double act_param, int threads) {
  const int f = (mode == DOWN ? down : up_a).factor;
  // (h, w): the input plane for UP and the fused modes, the output plane for DOWN
  const int64_t in_size = mode == DOWN ? f * h * f * w : h * w;
  const int64_t out_size = mode == UP ? f * h * f * w : h * w;
  auto work = [&](int64_t begin, int64_t end) {
    Scratch<T> sc;
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * in_size;
      T* op = out + p * out_size;
      if (mode == UP) {
        plane_up(xp, h, w, up_a, circular != 0, op, sc);
      } else if (mode == DOWN) {
        plane_down(xp, h, w, down, circular != 0, op, sc);
      } else {
        const int64_t big = f * h * f * w;
        sc.big.resize(big);
        plane_up(xp, h, w, up_a, circular != 0, sc.big.data(), sc);
        if (mode == FUSED) {
          activate(sc.big.data(), big, act, T(act_param));
        } else {
          sc.big2.resize(big);
          plane_up(g + p * in_size, h, w, up_b, circular != 0, sc.big2.data(), sc);
          activate_grad(sc.big.data(), sc.big2.data(), big, act, T(act_param));
        }
        plane_down(sc.big.data(), h, w, down, circular != 0, op, sc);
      }
    }
  };
  // Planes are independent: split them into contiguous ranges, one per thread (std::thread rather than OpenMP so
  // that this library brings no second OpenMP runtime into a process that already has PyTorch's).
  const int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(threads, planes));
  if (n_threads == 1) {
    work(0, planes);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n_threads; ++t)
    pool.emplace_back(work, planes * t / n_threads, planes * (t + 1) / n_threads);
  work(0, planes / n_threads);
  for (auto& th : pool) th.join();
}

}  // namespace

extern "C" {

int afk_version() { return 1; }

// dtype: 0 float32, 1 float64. Filters: rank, n, offset, factor, a (rank x n), b (rank x n) for up_a, up_b, down.
int afk_run(int dtype, int mode, const void* x, const void* g, void* out, int64_t planes, int64_t h, int64_t w,
            int ra, int na, int oa, int fa, const double* aa, const double* ba,
            int rb, int nb, int ob, int fb, const double* ab, const double* bb,
            int rd, int nd, int od, int fd, const double* ad, const double* bd,
            int circular, int act, double act_param, int threads) {
  const Spec up_a{ra, na, oa, fa, aa, ba}, up_b{rb, nb, ob, fb, ab, bb}, down{rd, nd, od, fd, ad, bd};
  if (dtype == 0) {
    run<float>(mode, static_cast<const float*>(x), static_cast<const float*>(g), static_cast<float*>(out), planes,
               h, w, up_a, up_b, down, circular, act, act_param, threads);
  } else if (dtype == 1) {
    run<double>(mode, static_cast<const double*>(x), static_cast<const double*>(g), static_cast<double*>(out),
                planes, h, w, up_a, up_b, down, circular, act, act_param, threads);
  } else {
    return 1;
  }
  return 0;
}

}  // extern "C"
