// lrkit's native CPU kernels: the per-tensor kernels of lrkit.optim._compiled, written by hand
// with ATen's portable SIMD type (at::vec::Vectorized), so that each is one loop over the
// elements that reads every tensor once and writes every result once.
//
// The equations are those of the Python kernel functions of the same names (dadapt.py,
// schedule_free.py), which document them with their papers; each element is computed by one
// function template, instantiated for a SIMD vector and for a scalar (the tail).
//
// Every entry point has the signature
//     void lrkit_<kernel>_<f32|f64>(int64_t n, void* const* ptrs, const int64_t* numels,
//                                   const double* scalars, int64_t flags, double* out,
//                                   int64_t threads)
// with `ptrs` n rows of the kernel's tensors (nullptr for an absent optional tensor), `numels`
// their element counts, `scalars` the kernel's packed numbers (Python's `pack`), `flags` its
// static flags (bit 0: coupled weight decay), and `out` n rows of the kernel's sums.
//
// Sums are deterministic, whatever the number of threads: each tensor is cut into chunks of
// CHUNK elements, every chunk's sum is kept (in the tensors' dtype within a chunk, then in
// double), and the chunks' sums are added in order after the parallel loop.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using at::vec::Vectorized;

constexpr int64_t CHUNK = 1 << 14;

// What differs between a SIMD vector and a scalar.
template <typename T>
inline T vsqrt(T a) { return std::sqrt(a); }
template <typename T>
inline Vectorized<T> vsqrt(const Vectorized<T>& a) { return a.sqrt(); }
template <typename T>
inline T vabs(T a) { return std::abs(a); }
template <typename T>
inline Vectorized<T> vabs(const Vectorized<T>& a) { return a.abs(); }
template <typename T>
inline void load(const T* p, T& out) { out = *p; }
template <typename T>
inline void load(const T* p, Vectorized<T>& out) { out = Vectorized<T>::loadu(p); }
template <typename T>
inline void store(T* p, const T& v) { *p = v; }
template <typename T>
inline void store(T* p, const Vectorized<T>& v) { v.store(p); }
template <typename T>
inline T total(const T& a) { return a; }
template <typename T>
inline T total(const Vectorized<T>& a) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& x, Vectorized<T>& y) { return x + y; }, a);
}

// torch.lerp's formula: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w).
template <typename V, typename T>
inline V lerp(const V& start, const V& end, T w) {
  return std::abs(w) < T(0.5) ? start + V(w) * (end - start) : end - (end - start) * V(T(1) - w);
}

// ---------------------------------------------------------------------------------------------
// The kernels. Each holds one tensor's pointers and its numbers (cast to the tensors' dtype as
// eager PyTorch does with a 0-dim float64 tensor), and `step` computes the elements at `i`.
// ---------------------------------------------------------------------------------------------

// schedule_free_kernel: rows (y, grad, z, exp_avg_sq or null);
// scalars (lr, c, 1 - beta2^t, beta, beta2, eps, weight_decay).
template <typename T>
struct ScheduleFree {
  static constexpr int ARITY = 4, SUMS = 0;
  T* y; const T* g; T* z; T* v;
  T lr, c, inv_bc2, one_minus_beta, beta2, one_minus_beta2, eps, wd;
  ScheduleFree(void* const* p, const double* s, int64_t)
      : y(static_cast<T*>(p[0])), g(static_cast<const T*>(p[1])), z(static_cast<T*>(p[2])),
        v(static_cast<T*>(p[3])), lr(T(s[0])), c(T(s[1])), inv_bc2(T(1.0 / s[2])),
        one_minus_beta(T(1.0 - s[3])), beta2(T(s[4])), one_minus_beta2(T(1.0 - s[4])),
        eps(T(s[5])), wd(T(s[6])) {}
  template <typename V>
  void step(int64_t i, V*) const {
    V yi, gi, zi, d;
    load(y + i, yi); load(g + i, gi); load(z + i, zi);
    if (v == nullptr) {
      d = gi + V(wd) * yi;
    } else {
      V vi;
      load(v + i, vi);
      vi = vi * V(beta2) + gi * gi * V(one_minus_beta2);
      store(v + i, vi);
      d = gi / (vsqrt(vi * V(inv_bc2)) + V(eps)) + V(wd) * yi;
    }
    V stp = d * V(lr);
    V zn = zi - stp;
    store(y + i, lerp(yi - stp * V(one_minus_beta), zn, c));
    store(z + i, zn);
  }
};

// prodigy_stats_kernel: rows (x, grad, s, x0); scalars (weight_decay, beta3, s_scale);
// sums <g^, x0 - x> and ||s||_1.
template <typename T>
struct ProdigyStats {
  static constexpr int ARITY = 4, SUMS = 2;
  const T* x; const T* g; T* s; const T* x0;
  T wd, beta3, s_scale;
  ProdigyStats(void* const* p, const double* sc, int64_t)
      : x(static_cast<const T*>(p[0])), g(static_cast<const T*>(p[1])), s(static_cast<T*>(p[2])),
        x0(static_cast<const T*>(p[3])), wd(T(sc[0])), beta3(T(sc[1])), s_scale(T(sc[2])) {}
  template <typename V>
  void step(int64_t i, V* acc) const {
    V xi, gi, si, x0i;
    load(x + i, xi); load(g + i, gi); load(s + i, si); load(x0 + i, x0i);
    V gh = gi + V(wd) * xi;
    acc[0] = acc[0] + gh * (x0i - xi);
    V sn = si * V(beta3) + gh * V(s_scale);
    store(s + i, sn);
    acc[1] = acc[1] + vabs(sn);
  }
};

// prodigy_update_kernel: rows (x, grad, exp_avg or null, exp_avg_sq);
// scalars (weight_decay, beta1, beta2, m_scale, m_next, decay, step, eps).
template <typename T>
struct ProdigyUpdate {
  static constexpr int ARITY = 4, SUMS = 0;
  T* x; const T* g; T* m; T* v;
  T wd, one_minus_beta1, beta2, one_minus_beta2, m_scale, m_next, keep, stp, eps;
  ProdigyUpdate(void* const* p, const double* s, int64_t)
      : x(static_cast<T*>(p[0])), g(static_cast<const T*>(p[1])), m(static_cast<T*>(p[2])),
        v(static_cast<T*>(p[3])), wd(T(s[0])), one_minus_beta1(T(1.0 - s[1])), beta2(T(s[2])),
        one_minus_beta2(T(1.0 - s[2])), m_scale(T(s[3])), m_next(T(s[4])), keep(T(1.0 - s[5])),
        stp(T(s[6])), eps(T(s[7])) {}
  template <typename V>
  void step(int64_t i, V*) const {
    V xi, gi, vi, mm;
    load(x + i, xi); load(g + i, gi); load(v + i, vi);
    V gh = gi + V(wd) * xi;
    V ga = gh * V(m_scale);
    if (m == nullptr) {
      mm = gh * V(m_next);
    } else {
      load(m + i, mm);
      mm = lerp(mm, ga, one_minus_beta1);
      store(m + i, mm);
    }
    vi = vi * V(beta2) + ga * ga * V(one_minus_beta2);
    store(v + i, vi);
    store(x + i, xi * V(keep) - V(stp) * mm / (vsqrt(vi) + V(eps)));
  }
};

// dual_adam_stats_kernel (UPDATE false) and dadapt_adam_kernel (UPDATE true): rows (x, grad,
// exp_avg or null, exp_avg_sq, s); scalars (weight_decay, beta1, beta2, beta_s, a, c, eps);
// flags bit 0: coupled; sums <g^, s / (sqrt(v) + eps)> (old s and v) and ||s||_1 (new s).
template <typename T, bool UPDATE>
struct DualAdam {
  static constexpr int ARITY = 5, SUMS = 2;
  T* x; const T* g; T* m; T* v; T* s;
  T wd, one_minus_beta1, beta2, one_minus_beta2, beta_s, a, c, eps;
  bool coupled;
  DualAdam(void* const* p, const double* sc, int64_t flags)
      : x(static_cast<T*>(p[0])), g(static_cast<const T*>(p[1])), m(static_cast<T*>(p[2])),
        v(static_cast<T*>(p[3])), s(static_cast<T*>(p[4])), wd(T(sc[0])),
        one_minus_beta1(T(1.0 - sc[1])), beta2(T(sc[2])), one_minus_beta2(T(1.0 - sc[2])),
        beta_s(T(sc[3])), a(T(sc[4])), c(T(sc[5])), eps(T(sc[6])), coupled((flags & 1) != 0) {}
  template <typename V>
  void step(int64_t i, V* acc) const {
    V gi, vi, si, xi, mm;
    load(g + i, gi); load(v + i, vi); load(s + i, si);
    if (coupled || UPDATE) load(x + i, xi);
    V gh = coupled ? gi + V(wd) * xi : gi;
    acc[0] = acc[0] + gh * (si / (vsqrt(vi) + V(eps)));
    V ga = gh * V(a);
    if (m == nullptr) {
      mm = ga;
    } else {
      load(m + i, mm);
      mm = lerp(mm, ga, one_minus_beta1);
      store(m + i, mm);
    }
    vi = vi * V(beta2) + gh * gh * V(one_minus_beta2);
    si = si * V(beta_s) + gh * V(c);
    store(v + i, vi);
    store(s + i, si);
    acc[1] = acc[1] + vabs(si);
    if (UPDATE) store(x + i, xi - mm / (vsqrt(vi) + V(eps)));
  }
};

// adam_update_kernel: rows (x, grad or null, exp_avg or null, exp_avg_sq);
// scalars (weight_decay, a, decay, step, eps).
template <typename T>
struct AdamUpdate {
  static constexpr int ARITY = 4, SUMS = 0;
  T* x; const T* g; const T* m; const T* v;
  T wd, a, keep, stp, eps;
  AdamUpdate(void* const* p, const double* s, int64_t)
      : x(static_cast<T*>(p[0])), g(static_cast<const T*>(p[1])), m(static_cast<const T*>(p[2])),
        v(static_cast<const T*>(p[3])), wd(T(s[0])), a(T(s[1])), keep(T(1.0 - s[2])),
        stp(T(s[3])), eps(T(s[4])) {}
  template <typename V>
  void step(int64_t i, V*) const {
    V xi, vi, mm;
    load(x + i, xi); load(v + i, vi);
    if (m == nullptr) {
      V gi;
      load(g + i, gi);
      mm = (gi + V(wd) * xi) * V(a);
    } else {
      load(m + i, mm);
    }
    store(x + i, xi * V(keep) - V(stp) * mm / (vsqrt(vi) + V(eps)));
  }
};

// ---------------------------------------------------------------------------------------------
// The driver: every chunk of every tensor is one work item of one parallel loop.
// ---------------------------------------------------------------------------------------------
template <typename K, typename T>
void run(int64_t n, void* const* ptrs, const int64_t* numels, const double* scalars,
         int64_t flags, double* out, int64_t threads) {
  constexpr int R = K::SUMS > 0 ? K::SUMS : 1;
  using Vec = Vectorized<T>;
  std::vector<int64_t> first(n + 1, 0);  // first work item of each tensor
  for (int64_t t = 0; t < n; ++t) first[t + 1] = first[t] + (numels[t] + CHUNK - 1) / CHUNK;
  const int64_t items = first[n];
  std::vector<int64_t> owner(items);
  for (int64_t t = 0; t < n; ++t) std::fill(owner.begin() + first[t], owner.begin() + first[t + 1], t);
  std::vector<double> part(static_cast<size_t>(items) * R, 0.0);
#pragma omp parallel for num_threads(threads) schedule(static) if (items > 1 && threads > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t t = owner[item];
    const K kernel(ptrs + t * K::ARITY, scalars, flags);
    const int64_t lo = (item - first[t]) * CHUNK;
    const int64_t hi = std::min(numels[t], lo + CHUNK);
    Vec vacc[R];
    T sacc[R];
    for (int r = 0; r < R; ++r) {
      vacc[r] = Vec(T(0));
      sacc[r] = T(0);
    }
    int64_t i = lo;
    for (; i + Vec::size() <= hi; i += Vec::size()) kernel.template step<Vec>(i, vacc);
    for (; i < hi; ++i) kernel.template step<T>(i, sacc);
    for (int r = 0; r < K::SUMS; ++r) {
      part[item * R + r] = static_cast<double>(total<T>(vacc[r])) + static_cast<double>(sacc[r]);
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int r = 0; r < K::SUMS; ++r) {
      double sum = 0.0;
      for (int64_t item = first[t]; item < first[t + 1]; ++item) sum += part[item * R + r];
      out[t * K::SUMS + r] = sum;
    }
  }
}

}  // namespace

#define LRKIT_ENTRY(NAME, KERNEL)                                                              \
  extern "C" void lrkit_##NAME##_f32(int64_t n, void* const* p, const int64_t* numels,         \
                                     const double* s, int64_t flags, double* out, int64_t th) { \
    run<KERNEL<float>, float>(n, p, numels, s, flags, out, th);                                \
  }                                                                                            \
  extern "C" void lrkit_##NAME##_f64(int64_t n, void* const* p, const int64_t* numels,         \
                                     const double* s, int64_t flags, double* out, int64_t th) { \
    run<KERNEL<double>, double>(n, p, numels, s, flags, out, th);                              \
  }

template <typename T>
using DualAdamStats = DualAdam<T, false>;
template <typename T>
using DAdaptAdam = DualAdam<T, true>;

LRKIT_ENTRY(schedule_free, ScheduleFree)
LRKIT_ENTRY(prodigy_stats, ProdigyStats)
LRKIT_ENTRY(prodigy_update, ProdigyUpdate)
LRKIT_ENTRY(dual_adam_stats, DualAdamStats)
LRKIT_ENTRY(dadapt_adam, DAdaptAdam)
LRKIT_ENTRY(adam_update, AdamUpdate)
