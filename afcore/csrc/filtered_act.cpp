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
//
// Why it is fast (each point is a measured factor in notebook 05):
// - Every filter pass is a weighted sum of shifted rows, ``dst = sum_k c_k src_k``, accumulated in registers over
//   chunks of the row and stored once (``sum_rows``), instead of one read-modify-write of dst per tap.
// - Taps that vanish are skipped: a windowed sinc with its cutoff at 1/f of Nyquist is zero at every non-zero
//   multiple of f (a half-band filter for f = 2), so 13 taps cost 7 multiply-adds per output, not 13.
// - The intermediate keeps its columns in polyphase order (all columns f q + 0, then all f q + 1, ...): the row
//   up-sampler writes each phase as one contiguous run, the column passes and the activation do not care about the
//   order of columns, and the row down-sampler reads its phases as contiguous runs. Only the stand-alone up and
//   down modes interleave or de-interleave, once, at their end or start.
// - The activation (or its derivative) is applied to each row of the intermediate as soon as that row is complete,
//   while it is still in the L1 cache.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>
#ifdef AFK_ATEN
#include <ATen/Parallel.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AFK_AVX2 1
#if defined(__AVX512F__)
#define AFK_AVX512 1
#endif
#endif

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

#ifdef AFK_AVX2
// The same exp and sigmoid on 8 (AVX2) or 16 (AVX-512) floats, with the division replaced by the reciprocal
// estimate and one Newton step (relative error ~1e-7, like the division). Measured on one core of the development
// machine: 0.58 ns per sample for the 8-wide version, 0.32 for the 16-wide one.
#define AFK_VECTOR_ACTS(W, V, P, RCP, ROUND, SCALE)                                                              \
  static inline V exp##W(V x) {                                                                                     \
    x = P##_min_ps(P##_max_ps(x, P##_set1_ps(-87.0f)), P##_set1_ps(88.0f));                                         \
    const V k = ROUND(P##_mul_ps(x, P##_set1_ps(1.44269504088896341f)));                                            \
    const V r = P##_fmadd_ps(k, P##_set1_ps(2.12194440e-4f), P##_fnmadd_ps(k, P##_set1_ps(0.693359375f), x));       \
    V p = P##_set1_ps(1.9875691500e-4f);                                                                            \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.3981999507e-3f));                                                          \
    p = P##_fmadd_ps(p, r, P##_set1_ps(8.3334519073e-3f));                                                          \
    p = P##_fmadd_ps(p, r, P##_set1_ps(4.1665795894e-2f));                                                          \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.6666665459e-1f));                                                          \
    p = P##_fmadd_ps(p, r, P##_set1_ps(5.0000001201e-1f));                                                          \
    p = P##_add_ps(P##_fmadd_ps(P##_mul_ps(p, r), r, r), P##_set1_ps(1.0f));                                        \
    return SCALE(p, k);                                                                                             \
  }                                                                                                                 \
  /* u <- u sigmoid(u) (silu) or sigmoid(u); with v: u <- v silu'(u) or v sigmoid'(u), W floats at offset i */      \
  static inline void sigmoid_family##W(float* u, const float* v, int64_t i, bool silu) {                            \
    const V one = P##_set1_ps(1.0f), x = P##_loadu_ps(u + i);                                                       \
    const V d = P##_add_ps(one, exp##W(P##_sub_ps(P##_setzero_ps(), x)));                                           \
    const V e = RCP(d);                                                                                             \
    const V s = P##_mul_ps(e, P##_fnmadd_ps(d, e, P##_set1_ps(2.0f))); /* e (2 - d e) */                            \
    V y;                                                                                                            \
    if (v == nullptr) {                                                                                             \
      y = silu ? P##_mul_ps(x, s) : s;                                                                              \
    } else {                                                                                                        \
      const V one_minus_s = P##_sub_ps(one, s);                                                                     \
      const V slope = silu ? P##_mul_ps(s, P##_fmadd_ps(x, one_minus_s, one)) : P##_mul_ps(s, one_minus_s);         \
      y = P##_mul_ps(P##_loadu_ps(v + i), slope);                                                                   \
    }                                                                                                               \
    P##_storeu_ps(u + i, y);                                                                                        \
  }                                                                                                                 \
  /* GELU (erf form): 1 + erf(x / sqrt 2) = q for x < 0, 2 - q for x >= 0, q = erfc(|x| / sqrt 2) by Abramowitz */  \
  /* and Stegun 7.1.26 (absolute error 1.5e-7); the x >= 0 step is min(max(x 1e30, 0), 1), exact for |x| > 1e-30 */ \
  /* and harmless below, where 2 - 2 q is ~3e-7. With v: u <- v gelu'(u) = v (cdf + x phi(x)). */                  \
  static inline void gelu##W(float* u, const float* v, int64_t i) {                                                 \
    const V x = P##_loadu_ps(u + i), zero = P##_setzero_ps(), one = P##_set1_ps(1.0f);                            \
    const V z = P##_mul_ps(P##_max_ps(x, P##_sub_ps(zero, x)), P##_set1_ps(0.70710678118654752f));               \
    const V d = P##_fmadd_ps(z, P##_set1_ps(0.3275911f), one);                                                      \
    V t = RCP(d);                                                                                                   \
    t = P##_mul_ps(t, P##_fnmadd_ps(d, t, P##_set1_ps(2.0f)));                                                      \
    V poly = P##_fmadd_ps(t, P##_set1_ps(1.061405429f), P##_set1_ps(-1.453152027f));                                \
    poly = P##_fmadd_ps(poly, t, P##_set1_ps(1.421413741f));                                                        \
    poly = P##_fmadd_ps(poly, t, P##_set1_ps(-0.284496736f));                                                       \
    poly = P##_fmadd_ps(poly, t, P##_set1_ps(0.254829592f));                                                        \
    poly = P##_mul_ps(poly, t);                                                                                     \
    const V e = exp##W(P##_sub_ps(zero, P##_mul_ps(z, z))); /* exp(-x^2 / 2) */                                     \
    const V q = P##_mul_ps(poly, e);                                                                                \
    const V step = P##_min_ps(P##_max_ps(P##_mul_ps(x, P##_set1_ps(1e30f)), zero), one);                            \
    const V cdf2 = P##_fmadd_ps(step, P##_fnmadd_ps(q, P##_set1_ps(2.0f), P##_set1_ps(2.0f)), q);                   \
    V y;                                                                                                            \
    if (v == nullptr) {                                                                                             \
      y = P##_mul_ps(P##_mul_ps(x, P##_set1_ps(0.5f)), cdf2);                                                       \
    } else {                                                                                                        \
      const V slope = P##_fmadd_ps(P##_mul_ps(x, P##_set1_ps(0.39894228040143268f)), e,                             \
                                   P##_mul_ps(cdf2, P##_set1_ps(0.5f)));                                            \
      y = P##_mul_ps(P##_loadu_ps(v + i), slope);                                                                   \
    }                                                                                                               \
    P##_storeu_ps(u + i, y);                                                                                        \
  }

#define AFK_ROUND8(a) _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define AFK_SCALE8(p, k) \
  _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23)))
AFK_VECTOR_ACTS(8, __m256, _mm256, _mm256_rcp_ps, AFK_ROUND8, AFK_SCALE8)
#ifdef AFK_AVX512
#define AFK_ROUND16(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
AFK_VECTOR_ACTS(16, __m512, _mm512, _mm512_rcp14_ps, AFK_ROUND16, _mm512_scalef_ps)
#endif

// The vector versions for SILU, SIGMOID and GELU (else none): how many leading samples they did.
static int64_t vector_act(float* u, const float* v, int64_t n, int act) {
  if (act != SILU && act != SIGMOID && act != GELU) return 0;
  int64_t i = 0;
#ifdef AFK_AVX512
  for (; i + 16 <= n; i += 16) {
    if (act == GELU) gelu16(u, v, i); else sigmoid_family16(u, v, i, act == SILU);
  }
#endif
  for (; i + 8 <= n; i += 8) {
    if (act == GELU) gelu8(u, v, i); else sigmoid_family8(u, v, i, act == SILU);
  }
  return i;
}
#endif

// The vectorised activations on floats where available (float64 keeps the exact library functions): how many
// leading samples they did.
template <typename T>
static inline int64_t fast_act(T* u, const T* v, int64_t n, int act) {
#ifdef AFK_AVX2
  if constexpr (std::is_same_v<T, float>) return vector_act(u, v, n, act);
#endif
  (void)u, (void)v, (void)n, (void)act;
  return 0;
}

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
      for (int64_t i = fast_act<T>(u, nullptr, n, SILU); i < n; ++i) u[i] = u[i] * sigmoid(u[i]);
      return;
    case SIGMOID:
#pragma omp simd
      for (int64_t i = fast_act<T>(u, nullptr, n, SIGMOID); i < n; ++i) u[i] = sigmoid(u[i]);
      return;
    case GELU:
      for (int64_t i = fast_act<T>(u, nullptr, n, GELU); i < n; ++i) u[i] = T(0.5) * u[i] * (T(1) + std::erf(u[i] * T(0.70710678118654752440)));
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
      for (int64_t i = fast_act<T>(u, v, n, SILU); i < n; ++i) {
        const T s = sigmoid(u[i]);
        u[i] = v[i] * s * (T(1) + u[i] * (T(1) - s));
      }
      return;
    case SIGMOID:
#pragma omp simd
      for (int64_t i = fast_act<T>(u, v, n, SIGMOID); i < n; ++i) {
        const T s = sigmoid(u[i]);
        u[i] = v[i] * s * (T(1) - s);
      }
      return;
    case GELU: {
      const T r2 = T(0.70710678118654752440), rpi = T(0.39894228040143267794);  // 1/sqrt(2), 1/sqrt(2 pi)
      for (int64_t i = fast_act<T>(u, v, n, GELU); i < n; ++i) {
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

// ------------------------------------------------------------------------------------------ weighted row sums
// dst[i] (= or +=) sum_k c[k] src[k][i]. The sums of a chunk of 4 vectors (32 floats or 16 doubles) are held in
// registers while the taps go by (GCC vector extensions: an array accumulator would be kept in memory, one
// read-modify-write per tap), then 1-vector chunks, then single samples.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  typedef T loose __attribute__((vector_size(32), aligned(sizeof(T))));  // for unaligned loads and stores
  static constexpr int lanes = 32 / sizeof(T);
};

template <typename T>
static void sum_rows(T* dst, const T* const* src, const T* c, int count, int64_t len, bool accumulate) {
  typedef typename Vec<T>::type V;
  typedef typename Vec<T>::loose U;
  constexpr int L = Vec<T>::lanes;
  const V zero = V{} * T(0);
  int64_t i0 = 0;
  for (; i0 + 4 * L <= len; i0 += 4 * L) {
    U* d = reinterpret_cast<U*>(dst + i0);
    V a0 = accumulate ? V(d[0]) : zero, a1 = accumulate ? V(d[1]) : zero;
    V a2 = accumulate ? V(d[2]) : zero, a3 = accumulate ? V(d[3]) : zero;
    for (int k = 0; k < count; ++k) {
      const V ck = zero + c[k];
      const U* s = reinterpret_cast<const U*>(src[k] + i0);
      a0 += ck * V(s[0]);
      a1 += ck * V(s[1]);
      a2 += ck * V(s[2]);
      a3 += ck * V(s[3]);
    }
    d[0] = a0;
    d[1] = a1;
    d[2] = a2;
    d[3] = a3;
  }
  for (; i0 + L <= len; i0 += L) {
    U* d = reinterpret_cast<U*>(dst + i0);
    V a0 = accumulate ? V(d[0]) : zero;
    for (int k = 0; k < count; ++k) a0 += (zero + c[k]) * V(*reinterpret_cast<const U*>(src[k] + i0));
    d[0] = a0;
  }
  for (; i0 < len; ++i0) {
    T a = accumulate ? dst[i0] : T(0);
    for (int k = 0; k < count; ++k) a += c[k] * src[k][i0];
    dst[i0] = a;
  }
}

// dst[0 .. n) = src[0 .. n), inline: the rows copied here are short (tens of samples), where a call to memmove
// costs as much as the copy (the build passes -fno-tree-loop-distribute-patterns so that GCC keeps these loops).
template <typename T>
static inline void copy_row(const T* src, int64_t n, T* dst) {
  typedef typename Vec<T>::type V;
  typedef typename Vec<T>::loose U;
  constexpr int L = Vec<T>::lanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) *reinterpret_cast<U*>(dst + i) = V(*reinterpret_cast<const U*>(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}

template <typename T>
static inline void zero_row(T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = T(0);
}

// ------------------------------------------------------------------------------------------ polyphase taps
// The non-zero taps of one separable term on one axis, split for the up- and the down-sampler.
//   up, phase p:  y[f q + p] = sum_k up_c[p][k] x[q - up_d[p][k]]
//   down:         y[i]       = sum_k down_c[k]  x[f (i + down_a[k]) + down_b[k]]      (f a + b = o - t)
template <typename T>
struct AxisTaps {
  std::vector<std::vector<T>> up_c;
  std::vector<std::vector<int>> up_d;
  std::vector<T> down_c;
  std::vector<int> down_a, down_b;
  int reach = 0;  // the largest |shift| in samples of the low-rate grid
};

template <typename T>
AxisTaps<T> split_taps(const double* c, int nt, int o, int f) {
  AxisTaps<T> at;
  double peak = 0;
  for (int t = 0; t < nt; ++t) peak = std::max(peak, std::fabs(c[t]));
  // a windowed sinc at 1/f of Nyquist is ~1e-17 at multiples of f: such taps change nothing and are skipped
  auto vanishes = [&](int t) { return std::fabs(c[t]) <= peak * 1e-12; };
  at.up_c.resize(f);
  at.up_d.resize(f);
  for (int p = 0; p < f; ++p) {
    for (int t = ((p + o) % f + f) % f; t < nt; t += f) {  // t = f d + p + o
      if (vanishes(t)) continue;
      const int d = (t - p - o) / f;
      at.up_c[p].push_back(T(c[t]));
      at.up_d[p].push_back(d);
      at.reach = std::max(at.reach, std::abs(d));
    }
  }
  for (int t = 0; t < nt; ++t) {
    if (vanishes(t)) continue;
    const int e = o - t, a = e >= 0 ? e / f : -((-e + f - 1) / f);
    at.down_c.push_back(T(c[t]));
    at.down_a.push_back(a);
    at.down_b.push_back(e - f * a);
    at.reach = std::max(at.reach, std::abs(a));
  }
  return at;
}

struct Spec {       // a 2-D FIR as R separable terms (from Python): column taps a (along H), row taps b (along W)
  int rank, n, offset, factor;
  const double* a;  // (rank, n)
  const double* b;  // (rank, n)
};

template <typename T>
struct Terms {      // the R terms of one Spec, split into polyphase taps
  int rank = 0, factor = 1, reach = 0;
  std::vector<AxisTaps<T>> cols, rows;
  explicit Terms(const Spec& s) : rank(s.rank), factor(s.factor) {
    for (int r = 0; r < s.rank; ++r) {
      cols.push_back(split_taps<T>(s.a + r * s.n, s.n, s.offset, s.factor));
      rows.push_back(split_taps<T>(s.b + r * s.n, s.n, s.offset, s.factor));
      reach = std::max({reach, cols.back().reach, rows.back().reach});
    }
  }
};

// ------------------------------------------------------------------------------------------ padded blocks
// Every intermediate is a set of blocks of (h + 2 m) x (w + 2 m) samples: the h x w valid samples of one polyphase
// component on the low-rate grid, with a margin of m samples on each side holding the padding (wrapped or zero).
// Block (p, p') of the f h x f w intermediate holds its samples (f q' + p', f q + p). With that layout every filter
// pass is a weighted sum of the same block shifted by whole samples (horizontal shift 1, vertical shift one row
// stride), evaluated over the flat range of the valid rows in one ``sum_rows`` call per block: long runs, no per-row
// set-up. The margin columns inside that range get meaningless values that no valid sample reads, and they are
// refilled before the next pass that needs them.
struct Geometry {
  int64_t h, w, m, stride, rows, size;
  Geometry(int64_t h_, int64_t w_, int64_t m_) : h(h_), w(w_), m(m_), stride(w_ + 2 * m_), rows(h_ + 2 * m_),
                                                  size((h_ + 2 * m_) * (w_ + 2 * m_)) {}
  int64_t valid_begin() const { return m * stride; }       // flat range of the valid rows
  int64_t valid_length() const { return h * stride; }
  int64_t at(int64_t i, int64_t j) const { return (m + i) * stride + m + j; }
};

// The margins of a block from its valid samples: columns (each row on its own) and/or rows.
template <typename T>
void fill_margins(T* b, const Geometry& g, bool circular, bool columns, bool rows) {
  if (columns) {
    const bool simple = !circular || g.m <= g.w;  // a circular margin wider than the plane wraps more than once
    for (int64_t i = 0; i < g.h; ++i) {
      T* row = b + g.at(i, 0);
      if (simple) {
        for (int64_t q = 1; q <= g.m; ++q) {
          row[-q] = circular ? row[g.w - q] : T(0);
          row[g.w - 1 + q] = circular ? row[q - 1] : T(0);
        }
        continue;
      }
      for (int64_t q = 1; q <= g.m; ++q) {
        row[-q] = row[pad_index(-q, g.w, true)];
        row[g.w - 1 + q] = row[pad_index(g.w - 1 + q, g.w, true)];
      }
    }
  }
  if (rows) {
    for (int64_t q = 1; q <= g.m; ++q) {
      const int64_t lo = pad_index(-q, g.h, circular), hi = pad_index(g.h - 1 + q, g.h, circular);
      T* top = b + (g.m - q) * g.stride;
      T* bottom = b + (g.m + g.h - 1 + q) * g.stride;
      if (lo < 0) zero_row(top, g.stride); else copy_row(b + (g.m + lo) * g.stride, g.stride, top);
      if (hi < 0) zero_row(bottom, g.stride); else copy_row(b + (g.m + hi) * g.stride, g.stride, bottom);
    }
  }
}

// Per-thread scratch memory (grows, never shrinks; zero-initialised, so margins never hold stale non-numbers).
template <typename T>
struct Scratch {
  std::vector<T> in, mid, big, big2, down, out;
  std::vector<const T*> src;
  std::vector<T> coef;
  T* blocks(std::vector<T>& v, int64_t count, const Geometry& g) {
    if (static_cast<int64_t>(v.size()) < count * g.size) v.resize(count * g.size, T(0));
    return v.data();
  }
};

// dst[flat valid range] (= or +=) sum_k c[k] src_k[flat + shift_k]
template <typename T>
void shifted_sum(T* dst, const Geometry& g, Scratch<T>& sc, bool accumulate) {
  sum_rows(dst + g.valid_begin(), sc.src.data(), sc.coef.data(), static_cast<int>(sc.src.size()), g.valid_length(),
           accumulate);
}

// ------------------------------------------------------------------------------------------ planes
// big (f x f blocks, index p' f + p) = up(x (h, w) natural); epi(block, valid row pointer) on each valid row of each
// block after the last term. Uses sc.in and sc.mid.
template <typename T, typename Epi>
void plane_up(const T* x, const Geometry& g, const Terms<T>& s, bool circular, T* big, Scratch<T>& sc, Epi epi) {
  const int f = s.factor;
  T* in = sc.blocks(sc.in, 1, g);
  T* mid = sc.blocks(sc.mid, f, g);
  for (int64_t i = 0; i < g.h; ++i) copy_row(x + i * g.w, g.w, in + g.at(i, 0));
  fill_margins(in, g, circular, true, false);
  for (int r = 0; r < s.rank; ++r) {
    const AxisTaps<T>& rt = s.rows[r];
    const AxisTaps<T>& ct = s.cols[r];
    for (int p = 0; p < f; ++p) {  // along rows: column phase p
      sc.src.clear();
      sc.coef.assign(rt.up_c[p].begin(), rt.up_c[p].end());
      for (int d : rt.up_d[p]) sc.src.push_back(in + g.valid_begin() - d);
      T* mp = mid + p * g.size;
      shifted_sum(mp, g, sc, false);
      fill_margins(mp, g, circular, false, true);
      for (int pr = 0; pr < f; ++pr) {  // along columns: row phase pr
        sc.src.clear();
        sc.coef.assign(ct.up_c[pr].begin(), ct.up_c[pr].end());
        for (int d : ct.up_d[pr]) sc.src.push_back(mp + g.valid_begin() - d * g.stride);
        shifted_sum(big + (pr * f + p) * g.size, g, sc, r > 0);
      }
    }
  }
  for (int b = 0; b < f * f; ++b)
    for (int64_t i = 0; i < g.h; ++i) epi(b, big + b * g.size + g.at(i, 0));
}

// out (h, w) natural (= or +=) down(big (f x f blocks)); the blocks' margins are overwritten. Uses sc.down, sc.out.
template <typename T>
void plane_down(T* big, const Geometry& g, const Terms<T>& s, bool circular, T* out, Scratch<T>& sc) {
  const int f = s.factor;
  T* down = sc.blocks(sc.down, f, g);
  T* res = sc.blocks(sc.out, 1, g);
  for (int b = 0; b < f * f; ++b) fill_margins(big + b * g.size, g, circular, false, true);
  for (int r = 0; r < s.rank; ++r) {
    const AxisTaps<T>& rt = s.rows[r];
    const AxisTaps<T>& ct = s.cols[r];
    for (int p = 0; p < f; ++p) {  // along columns, for column phase p: row f (i + a) + b is block (b, p), row i + a
      sc.src.clear();
      sc.coef.assign(ct.down_c.begin(), ct.down_c.end());
      for (size_t k = 0; k < ct.down_c.size(); ++k)
        sc.src.push_back(big + (ct.down_b[k] * f + p) * g.size + g.valid_begin() + ct.down_a[k] * g.stride);
      T* dp = down + p * g.size;
      shifted_sum(dp, g, sc, false);
      fill_margins(dp, g, circular, true, false);
    }
    sc.src.clear();  // along rows: column f (j + a) + b is block b, column j + a
    sc.coef.assign(rt.down_c.begin(), rt.down_c.end());
    for (size_t k = 0; k < rt.down_c.size(); ++k)
      sc.src.push_back(down + rt.down_b[k] * g.size + g.valid_begin() + rt.down_a[k]);
    shifted_sum(res, g, sc, r > 0);
  }
  for (int64_t i = 0; i < g.h; ++i) copy_row(res + g.at(i, 0), g.w, out + i * g.w);
}

// natural (f h, f w) <-> blocks
template <typename T>
void blocks_to_natural(const T* big, const Geometry& g, int f, T* out) {
  const int64_t fw = f * g.w;
  for (int pr = 0; pr < f; ++pr) {
    for (int64_t i = 0; i < g.h; ++i) {
      T* row = out + (f * i + pr) * fw;
      if (f == 2) {
        const T* b0 = big + (pr * 2) * g.size + g.at(i, 0);
        const T* b1 = big + (pr * 2 + 1) * g.size + g.at(i, 0);
#pragma omp simd
        for (int64_t q = 0; q < g.w; ++q) {
          row[2 * q] = b0[q];
          row[2 * q + 1] = b1[q];
        }
      } else {
        for (int p = 0; p < f; ++p) {
          const T* bp = big + (pr * f + p) * g.size + g.at(i, 0);
          for (int64_t q = 0; q < g.w; ++q) row[f * q + p] = bp[q];
        }
      }
    }
  }
}

template <typename T>
void natural_to_blocks(const T* u, const Geometry& g, int f, T* big) {
  const int64_t fw = f * g.w;
  for (int pr = 0; pr < f; ++pr) {
    for (int64_t i = 0; i < g.h; ++i) {
      const T* row = u + (f * i + pr) * fw;
      if (f == 2) {
        T* b0 = big + (pr * 2) * g.size + g.at(i, 0);
        T* b1 = big + (pr * 2 + 1) * g.size + g.at(i, 0);
#pragma omp simd
        for (int64_t q = 0; q < g.w; ++q) {
          b0[q] = row[2 * q];
          b1[q] = row[2 * q + 1];
        }
      } else {
        for (int p = 0; p < f; ++p) {
          T* bp = big + (pr * f + p) * g.size + g.at(i, 0);
          for (int64_t q = 0; q < g.w; ++q) bp[q] = row[f * q + p];
        }
      }
    }
  }
}

enum Mode { UP = 0, DOWN = 1, FUSED = 2, FUSED_GRAD = 3 };

template <typename T>
void run(int mode, const T* x, const T* g, T* out, int64_t planes, int64_t h, int64_t w, const Spec& up_a_spec,
         const Spec& up_b_spec, const Spec& down_spec, int circular_flag, int act, double act_param, int threads) {
  const bool circular = circular_flag != 0;
  const Terms<T> up_a(up_a_spec), up_b(up_b_spec), down(down_spec);
  const int f = (mode == DOWN ? down : up_a).factor;
  const Geometry geo(h, w, std::max({up_a.reach, up_b.reach, down.reach, 1}));
  // (h, w): the input plane for UP and the fused modes, the output plane for DOWN
  const int64_t big = f * h * f * w;
  const int64_t in_size = mode == DOWN ? big : h * w;
  const int64_t out_size = mode == UP ? big : h * w;
  const T param = T(act_param);
  auto nothing = [](int, T*) {};
  auto work = [&](int64_t begin, int64_t end) {
    Scratch<T> sc;
    T* b1 = sc.blocks(sc.big, f * f, geo);
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * in_size;
      T* op = out + p * out_size;
      if (mode == UP) {
        plane_up(xp, geo, up_a, circular, b1, sc, nothing);
        blocks_to_natural(b1, geo, f, op);
      } else if (mode == DOWN) {
        natural_to_blocks(xp, geo, f, b1);
        plane_down(b1, geo, down, circular, op, sc);
      } else if (mode == FUSED) {
        plane_up(xp, geo, up_a, circular, b1, sc, [&](int, T* row) { activate(row, geo.w, act, param); });
        plane_down(b1, geo, down, circular, op, sc);
      } else {
        T* b2 = sc.blocks(sc.big2, f * f, geo);
        plane_up(g + p * in_size, geo, up_b, circular, b2, sc, nothing);
        plane_up(xp, geo, up_a, circular, b1, sc,
                 [&](int, T* row) { activate_grad(row, b2 + (row - b1), geo.w, act, param); });
        plane_down(b1, geo, down, circular, op, sc);
      }
    }
  };
  // Planes are independent: split them into contiguous ranges, one per thread. Built against PyTorch (the default),
  // on its intra-op pool, so that no second set of threads competes with PyTorch's OpenMP workers; otherwise with
  // std::thread (not OpenMP: that would bring a second OpenMP runtime into a process that already has PyTorch's).
#ifdef AFK_ATEN
  if (threads > 1 && at::get_num_threads() > 1) {
    at::parallel_for(0, planes, std::max<int64_t>(1, planes / (4 * at::get_num_threads())),
                     [&](int64_t begin, int64_t end) { work(begin, end); });
    return;
  }
#endif
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

int afk_version() { return 2; }

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
