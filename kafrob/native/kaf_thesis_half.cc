// The released thesis models' KAF, computed bit for bit as TensorFlow computes kafrob.kaf.kaf_thesis_float16 in
// a graph on CPU (its ops are Eigen kernels, with oneDNN on or off), but once per element instead of as eight float16
// tensors of shape (..., C, D). Every float16 operation is a float32 operation rounded to float16, as Eigen's
// emulated float16 does; exp is TensorFlow's own float16 exp: given as a table (65,536 entries, an operand) and
// computed with the same polynomial where that is checked to give the table's every value (ComputedExp);
// the D-term sums follow Eigen's inner-most reduction of TensorFlow's AVX build: two 8-lane float16
// accumulators over the first 16 terms, added; the rest summed in order in float16; the 8 lanes summed as
// float32 pairs (i, i+4), (i, i+2), (0, 1), rounded; the two parts added. The input gradient follows the graph
// Grappler's arithmetic optimizer leaves (minimised broadcasts): ((2d) * ((g * e) * (a * -gamma))).
// tests/test_native.py checks both against the TensorFlow formula on random inputs, tests/test_checkpoints.py
// on the released models.
//
// With the parameters fixed (an attack on a released model calls the same layer thousands of times), each
// channel's KAF is a function from float16 to float16: after a few calls with the same parameters the value
// kernel computes it once for all 65,536 inputs of every channel, with the same per-element code, and from then
// on looks the values up (see TableCache). The input gradient depends on the upstream gradient: always computed.

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace kafrob_thesis {
namespace {

constexpr int kMaxSize = 64;  // dictionary points per KAF

// Scalar float16 rounding: F16C where the target has it, else the same IEEE round-to-nearest-even in software.
inline uint16_t HalfBits(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= (143u << 23)) return sign | (x > (255u << 23) ? 0x7e00u : 0x7c00u);  // >= 65536, inf, nan
  if (x < (113u << 23)) {  // below float16's smallest normal: the FPU rounds at the subnormal step 2^-24
    float a;
    std::memcpy(&a, &x, 4);
    a += 0.5f;
    uint32_t b;
    std::memcpy(&b, &a, 4);
    return sign | (b - 0x3f000000u);
  }
  x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + ((x >> 13) & 1u);
  return sign | static_cast<uint16_t>(x >> 13);
#endif
}

inline float HalfToFloat(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

// Lanes: one float16-rounding float each; consecutive lanes are consecutive channels.
struct Scalar {
  static constexpr int kWidth = 1;
  using V = float;
  static V Round(V v) { return HalfToFloat(HalfBits(v)); }
  static V RoundedExp(V v, const float* table) { return table[HalfBits(v)]; }  // exp of v rounded to float16
  static V Load(const uint16_t* p) { return HalfToFloat(*p); }
  static V LoadFloat(const float* p) { return *p; }
  static void Store(uint16_t* p, V v) { *p = HalfBits(v); }
  static void StoreFloat(float* p, V v) { *p = v; }
  static V Splat(float v) { return v; }
  static bool AllBelow(V v, float bound) { return std::fabs(v) < bound; }  // false for NaN
  static V Fma(V a, V b, V c) { return std::fmaf(a, b, c); }
  static V Floor(V v) { return std::floor(v); }
  static V Clamp(V v, float lo, float hi) { return v >= lo ? (v > hi ? hi : v) : lo; }  // NaN: lo, as max_ps
  static V Pow2(V m) {  // 2^m for an integer m in [-126, 127]
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(m) + 127) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  static V KeepNaN(V v, V h) { return std::isnan(h) ? h : v; }
};

#if defined(__AVX512F__)
struct Vector {
  static constexpr int kWidth = 16;
  using V = __m512;
  static V Round(V v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
  static V RoundedExp(V v, const float* table) {
    return _mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)), table, 4);
  }
  static V Load(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V LoadFloat(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(uint16_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static void StoreFloat(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Splat(float v) { return _mm512_set1_ps(v); }
  static bool AllBelow(V v, float bound) {
    return _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(bound), _CMP_LT_OQ) == 0xffff;
  }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Floor(V v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static V Clamp(V v, float lo, float hi) { return _mm512_min_ps(_mm512_max_ps(v, Splat(lo)), Splat(hi)); }
  static V Pow2(V m) {
    const __m512i e = _mm512_add_epi32(_mm512_cvttps_epi32(m), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static V KeepNaN(V v, V h) { return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(h, h, _CMP_UNORD_Q), h); }
};
#elif defined(__AVX2__) && defined(__F16C__)
struct Vector {
  static constexpr int kWidth = 8;
  using V = __m256;
  static V Round(V v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
  static V RoundedExp(V v, const float* table) {
    return _mm256_i32gather_ps(table, _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)), 4);
  }
  static V Load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static V LoadFloat(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(uint16_t* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static void StoreFloat(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Splat(float v) { return _mm256_set1_ps(v); }
  static bool AllBelow(V v, float bound) {
    const V abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
    return _mm256_movemask_ps(_mm256_cmp_ps(abs, _mm256_set1_ps(bound), _CMP_LT_OQ)) == 0xff;
  }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Floor(V v) { return _mm256_floor_ps(v); }
  static V Clamp(V v, float lo, float hi) { return _mm256_min_ps(_mm256_max_ps(v, Splat(lo)), Splat(hi)); }
  static V Pow2(V m) {
    const __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(m), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static V KeepNaN(V v, V h) { return _mm256_blendv_ps(v, h, _mm256_cmp_ps(h, h, _CMP_UNORD_Q)); }
};
#else
using Vector = Scalar;
#endif

// exp of v rounded to float16, as the table holds it, without the table: TensorFlow's float16 exp is Eigen's
// pexp_float (Cephes' range reduction and degree-6 polynomial) of the float16 input, rounded to float16; this is
// that computation, with the input clamped to [-20, 12] (every float16 input below gives 0, above +inf, as it
// does unclamped) and NaN passed through quietened, as the table has it. Whether it gives the table's value for
// every one of the 65,536 inputs is checked once per exp table (ComputedExpMatches); the gather is used where it
// does not. On CPUs whose 16-lane gathers are slow (AMD Zen 4: there the gather took 3.5x the rest of the input-
// gradient kernel's time) it is cheaper (1.1-1.2x, docs/speed.md).
template <typename L>
typename L::V ComputedExp(typename L::V v) {
  using V = typename L::V;
  const V h = L::Round(v);
  const V x = L::Clamp(h, -20.0f, 12.0f);
  const V m = L::Floor(L::Fma(x, L::Splat(1.44269504088896341f), L::Splat(0.5f)));
  V r = L::Fma(m, L::Splat(-0.693359375f), x);
  r = L::Fma(m, L::Splat(2.12194440e-4f), r);
  const V r2 = r * r;
  V p_even = L::Fma(r2, L::Splat(1.37449637986719608306884765625e-3f), L::Splat(4.166965186595916748046875e-2f));
  const V p_odd = L::Fma(r2, L::Splat(8.36894474923610687255859375e-3f), L::Splat(0.16666518151760101318359375f));
  p_even = L::Fma(r2, p_even, L::Splat(0.49999988079071044921875f));
  const V p_low = r + L::Splat(1.0f);
  V y = L::Fma(r, p_odd, p_even);
  y = L::Fma(r2, y, p_low);
  return L::KeepNaN(L::Round(y * L::Pow2(m)), h);
}

template <typename L, bool kComputedExp>
typename L::V Exp(typename L::V v, const float* table) {
  if constexpr (kComputedExp) {
    return ComputedExp<L>(v);
  } else {
    return L::RoundedExp(v, table);
  }
}

// Whether ComputedExp gives `table`'s value, bit for bit, for every float16 input, on both lane types.
template <typename L>
bool ComputedExpMatchesOn(const float* table) {
  std::vector<uint16_t> every(65536);
  for (int v = 0; v < 65536; ++v) every[v] = static_cast<uint16_t>(v);
  float lanes[L::kWidth];
  for (int v = 0; v < 65536; v += L::kWidth) {
    L::StoreFloat(lanes, ComputedExp<L>(L::Load(&every[v])));
    if (std::memcmp(lanes, table + v, sizeof(lanes)) != 0) return false;
  }
  return true;
}

bool ComputedExpMatches(const float* table) {
  return ComputedExpMatchesOn<Vector>(table) && ComputedExpMatchesOn<Scalar>(table);
}

// The parameters as float32 (exact: they are float16 values), laid out [j][c] so lanes read consecutive channels.
struct Params {
  int64_t channels;
  int size;
  std::vector<float> points, coeffs, neg_gamma, coeff_neg_gamma;  // (D, C), (D, C), (C), (D, C)
};

// Eigen's inner-most float16 sum of D terms (see the file comment), per lane.
template <typename L>
typename L::V PinnedSum(const typename L::V* m, int size) {
  using V = typename L::V;
  const int vectorized = size / 8 * 8, unrolled = size / 16 * 16;
  V zero = L::Splat(0.0f);
  V acc[8], acc2[8];
  for (int l = 0; l < 8; ++l) acc[l] = acc2[l] = zero;
  for (int j = 0; j < unrolled; j += 16) {
    for (int l = 0; l < 8; ++l) {
      acc[l] = L::Round(acc[l] + m[j + l]);
      acc2[l] = L::Round(acc2[l] + m[j + 8 + l]);
    }
  }
  for (int j = unrolled; j < vectorized; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] = L::Round(acc[l] + m[j + l]);
  }
  for (int l = 0; l < 8; ++l) acc[l] = L::Round(acc[l] + acc2[l]);
  V tail = zero;
  for (int j = vectorized; j < size; ++j) tail = L::Round(tail + m[j]);
  const V reduced = L::Round(((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])));
  return L::Round(tail + reduced);
}

// One block of kWidth consecutive elements starting at channel c: the KAF value, or the input gradient.
template <typename L, bool kGradient, bool kComputedExp>
void Block(const Params& p, const float* table, const uint16_t* x, const uint16_t* upstream, uint16_t* out,
           int64_t c) {
  using V = typename L::V;
  const V xv = L::Load(x);
  const V g = kGradient ? L::Load(upstream) : L::Splat(0.0f);
  const V ng = L::LoadFloat(&p.neg_gamma[c]);
  const V two = L::Splat(2.0f);
  // 2d is a float16 value (d is) unless it overflows float16, which needs |d| >= 32760: not for |x| < 32000.
  const bool two_d_exact = kGradient && L::AllBelow(xv, 32000.0f);
  V m[kMaxSize];
  for (int j = 0; j < p.size; ++j) {
    const int64_t at = j * p.channels + c;
    const V d = L::Round(xv - L::LoadFloat(&p.points[at]));
    const V e = Exp<L, kComputedExp>(ng * L::Round(d * d), table);  // exp(h(-gamma h(d^2)))
    if (kGradient) {
      const V two_d = two_d_exact ? two * d : L::Round(two * d);
      m[j] = L::Round(two_d * L::Round(L::Round(g * e) * L::LoadFloat(&p.coeff_neg_gamma[at])));
    } else {
      m[j] = L::Round(L::LoadFloat(&p.coeffs[at]) * e);
    }
  }
  L::Store(out, PinnedSum<L>(m, p.size));
}

template <bool kGradient, bool kComputedExp>
void Compute(tensorflow::OpKernelContext* ctx, const Params& p, const float* table, const uint16_t* x,
             const uint16_t* upstream, uint16_t* out, int64_t n) {
  const bool vector = p.channels % Vector::kWidth == 0;
  const int64_t width = vector ? Vector::kWidth : 1;
  const int64_t blocks = n / width;
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i = b * width, c = i % p.channels;
      const uint16_t* g = kGradient ? upstream + i : nullptr;
      if (vector) {
        Block<Vector, kGradient, kComputedExp>(p, table, x + i, g, out + i, c);
      } else {
        Block<Scalar, kGradient, kComputedExp>(p, table, x + i, g, out + i, c);
      }
    }
  };
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(pool->num_threads, pool->workers, blocks, /*cost_per_unit=*/width * p.size * 40, work);
}

template <bool kGradient>
void Compute(tensorflow::OpKernelContext* ctx, bool computed_exp, const Params& p, const float* table,
             const uint16_t* x, const uint16_t* upstream, uint16_t* out, int64_t n) {
  if (computed_exp) {
    Compute<kGradient, true>(ctx, p, table, x, upstream, out, n);
  } else {
    Compute<kGradient, false>(ctx, p, table, x, upstream, out, n);
  }
}

std::string CheckShapes(const tensorflow::Tensor& x, const tensorflow::Tensor& coeffs,
                        const tensorflow::Tensor& points, const tensorflow::Tensor& neg_gamma,
                        const tensorflow::Tensor& table) {
  if (x.dims() < 1) return "x must have a channel axis (last)";
  const int64_t channels = x.dim_size(x.dims() - 1);
  if (coeffs.dims() != 2 || coeffs.dim_size(0) != channels) return "coeffs must be (channels, D)";
  const int64_t size = coeffs.dim_size(1);
  if (size < 1 || size > kMaxSize) return "the dictionary must have 1 to 64 points";
  if (points.NumElements() != size && points.NumElements() != channels * size) return "points must be (D) or (C, D)";
  if (neg_gamma.NumElements() != 1 && neg_gamma.NumElements() != channels) return "neg_gamma must be () or (C)";
  if (table.NumElements() != 65536) return "the exp table must hold 65,536 entries";
  return "";
}

Params MakeParams(const tensorflow::Tensor& coeffs, const tensorflow::Tensor& points,
                  const tensorflow::Tensor& neg_gamma) {
  Params p;
  p.channels = coeffs.dim_size(0);
  p.size = static_cast<int>(coeffs.dim_size(1));
  const auto* a = reinterpret_cast<const uint16_t*>(coeffs.flat<Eigen::half>().data());
  const auto* d = reinterpret_cast<const uint16_t*>(points.flat<Eigen::half>().data());
  const auto* ng = reinterpret_cast<const uint16_t*>(neg_gamma.flat<Eigen::half>().data());
  const bool shared_points = points.NumElements() == p.size, shared_gamma = neg_gamma.NumElements() == 1;
  const size_t cells = static_cast<size_t>(p.channels) * p.size;
  p.points.resize(cells);
  p.coeffs.resize(cells);
  p.coeff_neg_gamma.resize(cells);
  p.neg_gamma.resize(p.channels);
  for (int64_t c = 0; c < p.channels; ++c) p.neg_gamma[c] = HalfToFloat(ng[shared_gamma ? 0 : c]);
  for (int j = 0; j < p.size; ++j) {
    for (int64_t c = 0; c < p.channels; ++c) {
      const size_t at = j * p.channels + c;
      p.points[at] = HalfToFloat(d[shared_points ? j : c * p.size + j]);
      p.coeffs[at] = HalfToFloat(a[c * p.size + j]);
      p.coeff_neg_gamma[at] = HalfToFloat(HalfBits(p.coeffs[at] * p.neg_gamma[c]));
    }
  }
  return p;
}

// The value tables of the parameter sets seen (one per set of coeffs, points, neg_gamma bytes): table[v * C + c]
// is channel c's KAF of the float16 with bit pattern v, computed by Compute<false> itself, so a lookup is the
// direct computation's result bit for bit. A set gets its table once it has been called kMinCalls times on at
// least as many elements as the table has (so a training step, whose parameters change each step, never pays
// for one); the least recently used tables go beyond kMaxTableBytes. Tables are built outside the lock (two
// callers may build the same one; the first stored wins) so no thread waits on the lock while holding workers.
class TableCache {
 public:
  using Table = std::vector<uint16_t>;
  static constexpr int kMinCalls = 4;
  static constexpr size_t kMaxTableBytes = size_t{512} << 20, kMaxKeys = 4096;

  static TableCache& Get() {
    static TableCache* cache = new TableCache;
    return *cache;
  }

  // The table of `key`, or null; `build` says whether the caller should build it now.
  std::shared_ptr<const Table> Find(const std::string& key, int64_t elements, int64_t entries, bool* build) {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = entries_[key];
    e.last_use = ++clock_;
    *build = false;
    if (e.table) return e.table;
    e.calls += 1;
    e.elements += elements;
    *build = e.calls >= kMinCalls && e.elements >= entries;
    if (entries_.size() > kMaxKeys) EvictOldest(key, /*with_table=*/false);
    return nullptr;
  }

  void Store(const std::string& key, std::shared_ptr<const Table> table) {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = entries_[key];
    e.last_use = ++clock_;
    if (e.table) return;
    e.table = std::move(table);
    bytes_ += e.table->size() * sizeof(uint16_t);
    built_ += 1;
    while (bytes_ > kMaxTableBytes && EvictOldest(key, /*with_table=*/true)) {
    }
  }

  // The exp tables seen (up to kMaxExpTables; TensorFlow's float16 exp in practice), each checked once against
  // ComputedExp: `*id` is the table's index, part of the value tables' keys (-1 for a table beyond the limit:
  // neither cached nor computed), and `*computed` whether ComputedExp gives its every value.
  static constexpr size_t kMaxExpTables = 4;
  void Classify(const float* exp_table, int* id, bool* computed) {
    std::lock_guard<std::mutex> lock(mu_);
    *id = -1;
    *computed = false;
    for (size_t i = 0; i < exp_tables_.size(); ++i) {
      if (std::memcmp(exp_tables_[i].values.data(), exp_table, 65536 * sizeof(float)) == 0) {
        *id = static_cast<int>(i);
        *computed = exp_tables_[i].computed;
        return;
      }
    }
    if (exp_tables_.size() == kMaxExpTables) return;
    exp_tables_.push_back({std::vector<float>(exp_table, exp_table + 65536), ComputedExpMatches(exp_table)});
    *id = static_cast<int>(exp_tables_.size()) - 1;
    *computed = exp_tables_.back().computed;
  }

  // Value tables built, bytes of those kept, exp tables seen whose exp is computed.
  std::array<int64_t, 3> Stats() {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t computed = 0;
    for (const ExpTable& t : exp_tables_) computed += t.computed;
    return {built_, static_cast<int64_t>(bytes_), computed};
  }

 private:
  struct Entry {
    std::shared_ptr<const Table> table;
    uint64_t last_use = 0;
    int calls = 0;
    int64_t elements = 0;
  };

  // Drops the least recently used entry other than `keep` (among those with a table if `with_table`).
  bool EvictOldest(const std::string& keep, bool with_table) {
    auto oldest = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first == keep || (with_table && !it->second.table)) continue;
      if (oldest == entries_.end() || it->second.last_use < oldest->second.last_use) oldest = it;
    }
    if (oldest == entries_.end()) return false;
    if (oldest->second.table) bytes_ -= oldest->second.table->size() * sizeof(uint16_t);
    entries_.erase(oldest);
    return true;
  }

  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  struct ExpTable {
    std::vector<float> values;
    bool computed;
  };
  std::vector<ExpTable> exp_tables_;
  uint64_t clock_ = 0;
  size_t bytes_ = 0;
  int64_t built_ = 0;
};

std::string TableKey(int exp_id, const Params& p, const tensorflow::Tensor& coeffs, const tensorflow::Tensor& points,
                     const tensorflow::Tensor& neg_gamma) {
  std::string key = std::to_string(exp_id) + ":" + std::to_string(p.channels) + ":" + std::to_string(p.size) + ":" +
                    std::to_string(points.NumElements()) + ":" + std::to_string(neg_gamma.NumElements()) + ":";
  for (const tensorflow::Tensor* t : {&coeffs, &points, &neg_gamma}) {
    const auto bytes = t->tensor_data();
    key.append(bytes.data(), bytes.size());
  }
  return key;
}

std::shared_ptr<const TableCache::Table> BuildTable(tensorflow::OpKernelContext* ctx, bool computed_exp,
                                                    const Params& p, const float* exp_table) {
  const int64_t entries = int64_t{65536} * p.channels;
  std::vector<uint16_t> every(entries);
  for (int64_t v = 0; v < 65536; ++v) {
    std::fill(every.begin() + v * p.channels, every.begin() + (v + 1) * p.channels, static_cast<uint16_t>(v));
  }
  auto table = std::make_shared<TableCache::Table>(entries);
  Compute<false>(ctx, computed_exp, p, exp_table, every.data(), nullptr, table->data(), entries);
  return table;
}

void LookUp(tensorflow::OpKernelContext* ctx, const TableCache::Table& table, int64_t channels, const uint16_t* x,
            uint16_t* out, int64_t n) {
  const uint16_t* values = table.data();
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t c = 0, i = row * channels; c < channels; ++c, ++i) out[i] = values[x[i] * channels + c];
    }
  };
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(pool->num_threads, pool->workers, n / channels, /*cost_per_unit=*/channels * 4, work);
}

template <bool kGradient>
class ThesisKafOp : public tensorflow::OpKernel {
 public:
  explicit ThesisKafOp(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const int shift = kGradient ? 1 : 0;
    const tensorflow::Tensor& x = ctx->input(0);
    const tensorflow::Tensor& upstream = ctx->input(shift);
    const tensorflow::Tensor& coeffs = ctx->input(1 + shift);
    const tensorflow::Tensor& points = ctx->input(2 + shift);
    const tensorflow::Tensor& neg_gamma = ctx->input(3 + shift);
    const tensorflow::Tensor& table = ctx->input(4 + shift);
    const std::string error = CheckShapes(x, coeffs, points, neg_gamma, table);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError("kafrob thesis KAF: " + error));
    OP_REQUIRES(ctx, upstream.NumElements() == x.NumElements(),
                absl::InvalidArgumentError("kafrob thesis KAF: upstream must have x's shape"));
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &out));
    const Params p = MakeParams(coeffs, points, neg_gamma);
    const auto* xs = reinterpret_cast<const uint16_t*>(x.flat<Eigen::half>().data());
    auto* outs = reinterpret_cast<uint16_t*>(out->flat<Eigen::half>().data());
    const float* exp_table = table.flat<float>().data();
    int exp_id = -1;
    bool computed_exp = false;
    TableCache::Get().Classify(exp_table, &exp_id, &computed_exp);
    if (!kGradient && p.channels > 0 && x.NumElements() > 0 && exp_id >= 0) {
      const std::string key = TableKey(exp_id, p, coeffs, points, neg_gamma);
      bool build = false;
      auto values = TableCache::Get().Find(key, x.NumElements(), int64_t{65536} * p.channels, &build);
      if (build) {
        values = BuildTable(ctx, computed_exp, p, exp_table);
        TableCache::Get().Store(key, values);
      }
      if (values) return LookUp(ctx, *values, p.channels, xs, outs, x.NumElements());
    }
    kafrob_thesis::Compute<kGradient>(ctx, computed_exp, p, exp_table, xs,
                                      reinterpret_cast<const uint16_t*>(upstream.flat<Eigen::half>().data()), outs,
                                      x.NumElements());
  }
};

// Diagnostics of this process's thesis KAF: value tables built, bytes of those kept, exp tables whose exp it computes.
class ThesisKafTablesOp : public tensorflow::OpKernel {
 public:
  explicit ThesisKafTablesOp(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tensorflow::TensorShape({3}), &out));
    const std::array<int64_t, 3> stats = TableCache::Get().Stats();
    for (int i = 0; i < 3; ++i) out->flat<int64_t>()(i) = stats[i];
  }
};

}  // namespace
}  // namespace kafrob_thesis

REGISTER_OP("KafrobThesisKaf")
    .Input("x: half")
    .Input("coeffs: half")
    .Input("points: half")
    .Input("neg_gamma: half")
    .Input("exp_table: float")
    .Output("value: half")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("KafrobThesisKafInputGradient")
    .Input("x: half")
    .Input("upstream: half")
    .Input("coeffs: half")
    .Input("points: half")
    .Input("neg_gamma: half")
    .Input("exp_table: float")
    .Output("x_gradient: half")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("KafrobThesisKafTables")
    .Output("stats: int64")
    .SetIsStateful()
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(3));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("KafrobThesisKafTables").Device(tensorflow::DEVICE_CPU), kafrob_thesis::ThesisKafTablesOp);
REGISTER_KERNEL_BUILDER(Name("KafrobThesisKaf").Device(tensorflow::DEVICE_CPU), kafrob_thesis::ThesisKafOp<false>);
REGISTER_KERNEL_BUILDER(Name("KafrobThesisKafInputGradient").Device(tensorflow::DEVICE_CPU),
                        kafrob_thesis::ThesisKafOp<true>);
