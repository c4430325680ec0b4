// CPU kernels for a KAF on an evenly spaced dictionary (kafrob.kaf.kaf_uniform), as TensorFlow ops with XLA
// lowerings. Inside a jit-compiled step each op becomes one XLA FFI custom call: XLA on CPU compiles the
// D-term sums to poorly vectorised code and fuses (duplicates) them into their consumers, which made a KAF
// ResNet20 step cost 2x a ReLU one; here each element is computed once, in explicit SIMD lanes.
//
// The D Gaussians k_j(x) = exp(-gamma (x - d_j)^2), d_j = start + j step, factor as
//   k_j(x) = e(u) rho(u)^j q_j,   u = x - start, e = exp(-gamma u^2), rho = exp(2 gamma step u),
//   q_j = exp(-gamma step^2 j^2),
// so an element needs two exponentials and a Horner sum in rho. The arithmetic is double precision: rho^j
// spans ~1e-130..1e130 here, which float32 cannot hold, and the result is then as accurate as float32 can
// store it. u is clamped to where every Gaussian is below exp(-140) (~1e-61, far below float32's smallest
// number), which keeps every exponential finite; the kafrob.native loader checks that bound for D.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <sched.h>

#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "xla/ffi/api/ffi.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

namespace kafrob {

constexpr double kNegligibleExponent = 140.0;

struct Dictionary {
  double start, step, gamma;
  int size;
  double lo, hi;  // clamp range of u = x - start
  Dictionary(const double* params, int size) : start(params[0]), step(params[1]), gamma(params[2]), size(size) {
    const double reach = std::sqrt(kNegligibleExponent / gamma);
    lo = -reach;
    hi = (size - 1) * step + reach;
  }
};

// Lanes: each kernel is written once for a lane type: double (any channel count) or a vector of kVector
// doubles (GCC/Clang vector extensions: one SIMD register of the target), used when the channel count is a
// multiple of kVector so that a vector of consecutive elements has consecutive channels. Every lane computes
// the same operations in the same order, so the width does not change a result. The width follows the
// target (kafrob.native builds for x86-64-v4 or x86-64-v3): wider than the registers, GCC 12 lowers vector
// comparisons and selects to scalar code (8 doubles on AVX2: the layer 7x slower, docs/kernels.md).
#if defined(__AVX512F__)
constexpr int kVector = 8;
#else
constexpr int kVector = 4;
#endif
typedef double VD __attribute__((vector_size(8 * kVector)));
typedef int64_t VI __attribute__((vector_size(8 * kVector)));
typedef float VF __attribute__((vector_size(4 * kVector)));

template <typename V>
struct Lanes;
template <>
struct Lanes<double> {
  using Int = int64_t;
  static constexpr int kWidth = 1;
  static double Load(const float* p) { return *p; }
  static double Load(const double* p) { return *p; }
  static void Store(float* p, double v) { *p = static_cast<float>(v); }
  static void Store(double* p, double v) { *p = v; }
};
template <>
struct Lanes<VD> {
  using Int = VI;
  static constexpr int kWidth = kVector;
  static VD Load(const float* p) {
    VF f;
    std::memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, VD);
  }
  static VD Load(const double* p) {
    VD v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void Store(float* p, VD v) {
    const VF f = __builtin_convertvector(v, VF);
    std::memcpy(p, &f, sizeof f);
  }
  static void Store(double* p, VD v) { std::memcpy(p, &v, sizeof v); }
};

// exp(x) for x clamped to [-708, 708]: x = n ln2 + r with |r| <= ln2 / 2, a degree-9 Taylor polynomial for
// exp(r) (truncation error < 3e-12, relative), and 2^n written into the exponent bits.
template <typename V>
static inline V Exp(V x) {
  using Int = typename Lanes<V>::Int;
  const V lo = V{} - 708.0, hi = V{} + 708.0, magic = V{} + 6755399441055744.0;  // 1.5 * 2^52
  x = x < lo ? lo : (x > hi ? hi : x);
  const V shifted = x * 1.4426950408889634 + magic;  // round(x / ln2), in the low mantissa bits
  const V n = shifted - magic;
  const V r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  V p = V{} + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  Int bits, magic_bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  std::memcpy(&magic_bits, &magic, sizeof bits);
  const Int scale_bits = (bits - magic_bits + 1023) << 52;
  V scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// u = x - start clamped to [lo, hi]; a NaN stays NaN (both comparisons are false).
template <typename V>
static inline V ClampedOffset(V x, const Dictionary& d) {
  const V u = x - d.start, lo = V{} + d.lo, hi = V{} + d.hi;
  return u < lo ? lo : (u > hi ? hi : u);
}

// The cores this process may run on (a container's or taskset's limit, not the machine's core count).
static int64_t Cores() {
  static const int64_t cores = [] {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? std::max(1, CPU_COUNT(&set))
                                                       : std::max(1u, std::thread::hardware_concurrency());
  }();
  return cores;
}

// Threads worth starting for `work` elementary terms (about 64k each, so small layers stay on one thread).
static int64_t Threads(int64_t work) { return std::min<int64_t>(Cores(), std::max<int64_t>(1, work >> 16)); }

// fn(begin, end, part) over `parts` row ranges splitting [0, rows): this thread runs the first range and
// any whose thread could not be started.
template <typename Fn>
static void ParallelRows(int64_t rows, int64_t parts, const Fn& fn) {
  if (parts <= 1) return fn(0, rows, 0);
  std::vector<std::thread> pool;
  const int64_t per = (rows + parts - 1) / parts;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t begin = std::min(rows, t * per), end = std::min(rows, (t + 1) * per);
    try {
      pool.emplace_back(fn, begin, end, t);
    } catch (const std::system_error&) {
      fn(begin, end, t);
    }
  }
  fn(0, std::min(rows, per), 0);
  for (auto& thread : pool) thread.join();
}

// table[j * channels + c] = coeffs[c, j] q_j: the Horner coefficients in rho, one row per power.
static std::vector<double> HornerTable(const float* coeffs, int64_t channels, const Dictionary& d) {
  std::vector<double> table(d.size * channels);
  const double c = d.gamma * d.step * d.step;
  for (int j = 0; j < d.size; ++j) {
    const double q = std::exp(-c * j * j);
    for (int64_t ch = 0; ch < channels; ++ch) table[j * channels + ch] = coeffs[ch * d.size + j] * q;
  }
  return table;
}

// f(x) and f'(x) for x of shape (rows, channels): f = e p(rho), f' = -2 gamma e (u p - step rho p'(rho)).
template <typename V>
static void ValueAndSlopeLanes(const float* x, const double* table, int64_t rows, int64_t channels,
                               const Dictionary& d, float* value, float* slope) {
  using L = Lanes<V>;
  const double two_gamma_step = 2.0 * d.gamma * d.step, gamma = d.gamma, step = d.step;
  const int last = d.size - 1;
  ParallelRows(rows, Threads(rows * channels * d.size), [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t i = begin * channels; i < end * channels; i += L::kWidth) {
      const int64_t c = i % channels;
      const V u = ClampedOffset(L::Load(x + i), d);
      const V e = Exp<V>(-gamma * u * u), rho = Exp<V>(two_gamma_step * u);
      V p = L::Load(table + last * channels + c), dp = V{};
      for (int j = last - 1; j >= 0; --j) {
        dp = dp * rho + p;
        p = p * rho + L::Load(table + j * channels + c);
      }
      L::Store(value + i, e * p);
      L::Store(slope + i, (-2.0 * gamma) * e * (u * p - step * rho * dp));
    }
  });
}

// partial[thread, j, c] = sum over the thread's rows of upstream e rho^j (q_j is applied by the caller).
// kSize > 0: the dictionary size is known at compile time, and each lane group's kSize running sums stay in
// registers over blocks of rows (loads and stores of the sums would otherwise bound the loop).
template <typename V, int kSize>
static void MomentLanes(const float* x, const float* upstream, int64_t rows, int64_t channels, const Dictionary& d,
                        int64_t threads, double* partial) {
  using L = Lanes<V>;
  constexpr int64_t kRowBlock = 64;  // rows whose x and upstream stay in L1 while every lane group visits them
  const double two_gamma_step = 2.0 * d.gamma * d.step, gamma = d.gamma;
  const int size = kSize > 0 ? kSize : d.size;
  ParallelRows(rows, threads, [&](int64_t begin, int64_t end, int64_t thread) {
    double* acc = partial + thread * size * channels;
    for (int64_t block = begin; block < end; block += kRowBlock) {
      const int64_t block_end = std::min(end, block + kRowBlock);
      for (int64_t c = 0; c < channels; c += L::kWidth) {
        V sums[kSize > 0 ? kSize : 1] = {};
        for (int64_t m = block; m < block_end; ++m) {
          const int64_t i = m * channels + c;
          const V u = ClampedOffset(L::Load(x + i), d);
          const V rho = Exp<V>(two_gamma_step * u);
          V term = L::Load(upstream + i) * Exp<V>(-gamma * u * u);
          if constexpr (kSize > 0) {
#pragma GCC unroll 64
            for (int j = 0; j < kSize; ++j) {
              sums[j] += term;
              term = term * rho;
            }
          } else {
            for (int j = 0; j < size; ++j) {
              L::Store(acc + j * channels + c, L::Load(acc + j * channels + c) + term);
              term = term * rho;
            }
          }
        }
        if constexpr (kSize > 0) {
          for (int j = 0; j < kSize; ++j) L::Store(acc + j * channels + c, L::Load(acc + j * channels + c) + sums[j]);
        }
      }
    }
  });
}

template <typename V>
static void Moments(const float* x, const float* upstream, int64_t rows, int64_t channels, const Dictionary& d,
                    int64_t threads, double* partial) {
  if (d.size == 20) {  // the thesis's dictionary
    MomentLanes<V, 20>(x, upstream, rows, channels, d, threads, partial);
  } else {
    MomentLanes<V, 0>(x, upstream, rows, channels, d, threads, partial);
  }
}

static void ValueAndSlope(const float* x, const float* coeffs, int64_t rows, int64_t channels, const Dictionary& d,
                          float* value, float* slope) {
  const std::vector<double> table = HornerTable(coeffs, channels, d);
  if (channels % Lanes<VD>::kWidth == 0) {
    ValueAndSlopeLanes<VD>(x, table.data(), rows, channels, d, value, slope);
  } else {
    ValueAndSlopeLanes<double>(x, table.data(), rows, channels, d, value, slope);
  }
}

// out[c, j] = sum over rows of upstream k_j(x): the coefficients' gradient.
static void CoefficientGradient(const float* x, const float* upstream, int64_t rows, int64_t channels,
                                const Dictionary& d, float* out) {
  const int size = d.size;
  const int64_t threads = Threads(rows * channels * size);
  std::vector<double> partial(threads * size * channels, 0.0);
  if (channels % Lanes<VD>::kWidth == 0) {
    Moments<VD>(x, upstream, rows, channels, d, threads, partial.data());
  } else {
    Moments<double>(x, upstream, rows, channels, d, threads, partial.data());
  }
  const double c = d.gamma * d.step * d.step;
  for (int j = 0; j < size; ++j) {
    const double q = std::exp(-c * j * j);
    for (int64_t ch = 0; ch < channels; ++ch) {
      double sum = 0.0;
      for (int64_t t = 0; t < threads; ++t) sum += partial[(t * size + j) * channels + ch];
      out[ch * size + j] = static_cast<float>(sum * q);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The ops. x (..., C) float32, coeffs (C, D) float32, dictionary = [start, step, gamma] float64.
//   KafrobKaf(x, coeffs, dictionary) -> (f(x), f'(x))
//   KafrobKafCoefficientGradient(x, upstream, coeffs, dictionary) -> (C, D)
// Each has a CPU kernel (eager and graph execution) and an XLA kernel emitting an FFI custom call.

namespace {

namespace ffi = xla::ffi;

struct Operands {
  const float* x;
  const float* upstream;  // coefficient gradient only
  const float* coeffs;
  const double* dictionary;
  int64_t elements, channels, size;
};

// "" or what is wrong with the operands' shapes.
std::string CheckShapes(int64_t x_rank, int64_t channels, int64_t coeff_rank, int64_t coeff_channels,
                        int64_t size, int64_t dictionary_elements, int64_t upstream_elements, int64_t elements) {
  if (x_rank < 1) return "kafrob KAF: x needs a channel axis";
  if (coeff_rank != 2 || coeff_channels != channels) {
    return "kafrob KAF: coeffs must have shape (channels, dictionary size), channels = x's last dimension";
  }
  if (size < 2) return "kafrob KAF: the dictionary needs at least 2 points";
  if (dictionary_elements != 3) return "kafrob KAF: dictionary must be [start, step, gamma]";
  if (upstream_elements != elements) return "kafrob KAF: upstream must have x's shape";
  return "";
}

void Compute(bool coefficient_gradient, const Operands& in, float* out0, float* out1) {
  const int64_t rows = in.channels ? in.elements / in.channels : 0;
  if (rows == 0) {
    if (coefficient_gradient) std::fill(out0, out0 + in.channels * in.size, 0.0f);
    return;
  }
  const Dictionary d(in.dictionary, static_cast<int>(in.size));
  if (coefficient_gradient) {
    CoefficientGradient(in.x, in.upstream, rows, in.channels, d, out0);
  } else {
    ValueAndSlope(in.x, in.coeffs, rows, in.channels, d, out0, out1);
  }
}

template <bool kCoefficientGradient>
class KafOp : public tensorflow::OpKernel {
 public:
  explicit KafOp(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const int shift = kCoefficientGradient ? 1 : 0;
    const tensorflow::Tensor& x = ctx->input(0);
    const tensorflow::Tensor& upstream = ctx->input(shift ? 1 : 0);  // KafrobKaf has none: x stands in
    const tensorflow::Tensor& coeffs = ctx->input(1 + shift);
    const tensorflow::Tensor& dictionary = ctx->input(2 + shift);
    const int64_t channels = x.dims() ? x.dim_size(x.dims() - 1) : 0;
    const int64_t size = coeffs.dims() == 2 ? coeffs.dim_size(1) : 0;
    const std::string error =
        CheckShapes(x.dims(), channels, coeffs.dims(), coeffs.dims() ? coeffs.dim_size(0) : -1, size,
                    dictionary.NumElements(), upstream.NumElements(), x.NumElements());
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));
    tensorflow::Tensor* out0 = nullptr;
    tensorflow::Tensor* out1 = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, kCoefficientGradient ? coeffs.shape() : x.shape(), &out0));
    if (!kCoefficientGradient) OP_REQUIRES_OK(ctx, ctx->allocate_output(1, x.shape(), &out1));
    const Operands in{x.flat<float>().data(), upstream.flat<float>().data(), coeffs.flat<float>().data(),
                      dictionary.flat<double>().data(), x.NumElements(), channels, size};
    kafrob::Compute(kCoefficientGradient, in, out0->flat<float>().data(),
                    out1 ? out1->flat<float>().data() : nullptr);
  }
};

template <bool kCoefficientGradient>
ffi::Error Handle(ffi::RemainingArgs args, ffi::RemainingRets rets) {
  const int shift = kCoefficientGradient ? 1 : 0;
  auto x = args.get<ffi::AnyBuffer>(0);
  auto upstream = args.get<ffi::AnyBuffer>(shift ? 1 : 0);  // KafrobKaf has none: x stands in
  auto coeffs = args.get<ffi::AnyBuffer>(1 + shift);
  auto dictionary = args.get<ffi::AnyBuffer>(2 + shift);
  auto out0 = rets.get<ffi::AnyBuffer>(0);
  auto out1 = rets.get<ffi::AnyBuffer>(kCoefficientGradient ? 0 : 1);
  if (!x.has_value() || !upstream.has_value() || !coeffs.has_value() || !dictionary.has_value() ||
      !out0.has_value() || !out1.has_value()) {
    return ffi::Error::InvalidArgument("kafrob KAF custom call: wrong number of operands or results");
  }
  const auto dims = x->dimensions();
  const auto coeff_dims = coeffs->dimensions();
  const int64_t channels = dims.size() ? dims[dims.size() - 1] : 0;
  const int64_t size = coeff_dims.size() == 2 ? coeff_dims[1] : 0;
  const std::string error =
      CheckShapes(dims.size(), channels, coeff_dims.size(), coeff_dims.size() ? coeff_dims[0] : -1, size,
                  dictionary->element_count(), upstream->element_count(), x->element_count());
  if (!error.empty()) return ffi::Error::InvalidArgument(error);
  const Operands in{static_cast<const float*>(x->untyped_data()), static_cast<const float*>(upstream->untyped_data()),
                    static_cast<const float*>(coeffs->untyped_data()),
                    static_cast<const double*>(dictionary->untyped_data()), static_cast<int64_t>(x->element_count()),
                    channels, size};
  kafrob::Compute(kCoefficientGradient, in, static_cast<float*>(out0.value()->untyped_data()),
                  static_cast<float*>(out1.value()->untyped_data()));
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(kValueAndSlopeHandler, Handle<false>, ffi::Ffi::Bind().RemainingArgs().RemainingRets());
XLA_FFI_DEFINE_HANDLER(kCoefficientGradientHandler, Handle<true>, ffi::Ffi::Bind().RemainingArgs().RemainingRets());

constexpr char kValueAndSlopeTarget[] = "kafrob_kaf_value_and_slope";
constexpr char kCoefficientGradientTarget[] = "kafrob_kaf_coefficient_gradient";

// Lowers the op to the custom call, operands and results pinned to the row-major layout the kernels read.
template <bool kCoefficientGradient>
class KafXlaOp : public tensorflow::XlaOpKernel {
 public:
  explicit KafXlaOp(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}

  void Compile(tensorflow::XlaOpKernelContext* ctx) override {
    std::vector<xla::XlaOp> operands;
    std::vector<xla::Shape> shapes;
    for (int i = 0; i < ctx->num_inputs(); ++i) {
      auto shape = ctx->InputXlaShape(i);
      OP_REQUIRES_OK(ctx, shape.status());
      xla::Shape s = *shape;
      *s.mutable_layout() = xla::LayoutUtil::GetDefaultLayoutForShape(s);
      operands.push_back(ctx->Input(i));
      shapes.push_back(s);
    }
    const xla::Shape& x = shapes[0];
    const xla::Shape result = kCoefficientGradient ? shapes[2] : xla::ShapeUtil::MakeTupleShape({x, x});
    xla::XlaOp call = xla::CustomCallWithLayout(
        ctx->builder(), kCoefficientGradient ? kCoefficientGradientTarget : kValueAndSlopeTarget, operands, result,
        shapes, /*opaque=*/"", /*has_side_effect=*/false, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    if (kCoefficientGradient) {
      ctx->SetOutput(0, call);
    } else {
      ctx->SetOutput(0, xla::GetTupleElement(call, 0));
      ctx->SetOutput(1, xla::GetTupleElement(call, 1));
    }
  }
};

}  // namespace
}  // namespace kafrob

extern "C" const XLA_FFI_Api* XLA_FFI_GetApi();  // exported by TensorFlow's libtensorflow_framework
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), kafrob::kValueAndSlopeTarget, "Host", kafrob::kValueAndSlopeHandler);
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), kafrob::kCoefficientGradientTarget, "Host",
                         kafrob::kCoefficientGradientHandler);

REGISTER_OP("KafrobKaf")
    .Input("x: float")
    .Input("coeffs: float")
    .Input("dictionary: double")
    .Output("value: float")
    .Output("slope: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("KafrobKafCoefficientGradient")
    .Input("x: float")
    .Input("upstream: float")
    .Input("coeffs: float")
    .Input("dictionary: double")
    .Output("coeffs_gradient: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(2));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("KafrobKaf").Device(tensorflow::DEVICE_CPU), kafrob::KafOp<false>);
REGISTER_KERNEL_BUILDER(Name("KafrobKafCoefficientGradient").Device(tensorflow::DEVICE_CPU), kafrob::KafOp<true>);
// Registered directly as kernels of the XLA CPU compilation device rather than with REGISTER_XLA_OP: XLA turns
// REGISTER_XLA_OP registrations into kernels once, when TensorFlow first creates its devices, which usually
// happened before this library is loaded.
REGISTER_KERNEL_BUILDER(Name("KafrobKaf").Device(tensorflow::DEVICE_CPU_XLA_JIT), kafrob::KafXlaOp<false>);
REGISTER_KERNEL_BUILDER(Name("KafrobKafCoefficientGradient").Device(tensorflow::DEVICE_CPU_XLA_JIT),
                        kafrob::KafXlaOp<true>);
