// RepQ-BNest's merge of a block (repq/reparam/estimate.py) on the CPU: every branch
// folded with its S3/S8 statistics and summed into the deploy kernel and bias, and the
// backward of that, one task per output channel. A channel's branch kernels and its row
// of the merged kernel stay in cache while the task reads them, so each kernel is read
// from memory once forward and once backward.
//
// A block comes as five optional tensors a branch (kernel, bias, BN weight, BN bias,
// scale) and one eps a branch, negative for a branch without BN.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kSlots = 5;
using Flat = std::vector<std::optional<torch::Tensor>>;

template <typename T>
struct Branch {
  const T* kernel;
  const T *bias, *gamma, *beta, *scale;  // nullptr where absent
  double eps;                             // < 0: no BN
  int64_t kh, kw, top, left;              // its size and place in the block's kernel

  bool norm() const { return eps >= 0; }
  double at(const T* p, int64_t o, double absent) const { return p ? double(p[o]) : absent; }
};

template <typename T>
const T* data_or_null(const std::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// The branches' pointers into contiguous copies of their tensors (held in `keep`).
template <typename T>
std::vector<Branch<T>> branches(const Flat& flat, const std::vector<double>& eps, int64_t kh,
                                int64_t kw, Flat& keep) {
  keep.clear();
  for (const auto& t : flat) keep.push_back(t.has_value() ? std::optional(t->contiguous()) : std::nullopt);
  std::vector<Branch<T>> out;
  for (size_t j = 0; j < eps.size(); ++j) {
    const auto& k = *keep[kSlots * j];
    const int64_t h = k.size(2), w = k.size(3);
    out.push_back({k.data_ptr<T>(), data_or_null<T>(keep[kSlots * j + 1]),
                   data_or_null<T>(keep[kSlots * j + 2]), data_or_null<T>(keep[kSlots * j + 3]),
                   data_or_null<T>(keep[kSlots * j + 4]), eps[j], h, w, (kh - h) / 2, (kw - w) / 2});
  }
  return out;
}

struct Geometry {
  int64_t out, in_per_group, per_group, kh, kw;
  int64_t input_offset(int64_t o) const { return (o / per_group) * in_per_group; }
};

constexpr int64_t kOutBlock = 16;  // output channels of one backward task

// (sum_k w[k] m[k], sum_k w[k]^2 v[k]) over n values: S3 and S8 of one output channel,
// with the input moments laid out like the kernel's row (partial sums one a SIMD lane).
template <typename T>
std::pair<double, double> moments(const T* w, const T* m, const T* v, int64_t n) {
  T mean = 0, var = 0;
#pragma omp simd reduction(+ : mean, var)
  for (int64_t k = 0; k < n; ++k) {
    mean += w[k] * m[k];
    var += w[k] * w[k] * v[k];
  }
  return {mean, var};
}

// sum_k a[k] b[k] over n values (partial sums one a SIMD lane).
template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  T total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < n; ++k) total += a[k] * b[k];
  return total;
}

// Where a branch's kernel row sits in the block's, centred: tap t of input channel i of
// the branch is tap where[t] of input channel i of the block.
struct Place {
  int64_t in, taps, block_taps;
  std::vector<int64_t> where;
  bool same() const { return taps == block_taps; }
};

template <typename T>
Place place(const Branch<T>& b, const Geometry& g) {
  Place p{g.in_per_group, b.kh * b.kw, g.kh * g.kw, {}};
  for (int64_t y = 0; y < b.kh; ++y) {
    for (int64_t x = 0; x < b.kw; ++x) p.where.push_back((b.top + y) * g.kw + b.left + x);
  }
  return p;
}

template <typename T>
std::vector<Place> places(const std::vector<Branch<T>>& bs, const Geometry& g) {
  std::vector<Place> out;
  for (const auto& b : bs) out.push_back(place(b, g));
  return out;
}

// w += a k, k placed centred in w (a smaller kernel tap by tap, over the input channels).
template <typename T>
void add_scaled(T* w, const T* k, T a, const Place& p) {
  if (p.same()) {
    const int64_t n = p.in * p.taps;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) w[t] += a * k[t];
    return;
  }
  for (int64_t t = 0; t < p.taps; ++t) {
    T* dst = w + p.where[t];
    const T* src = k + t;
    for (int64_t i = 0; i < p.in; ++i) dst[i * p.block_taps] += a * src[i * p.taps];
  }
}

// sum of g k over k's taps, g read where k sits centred in it.
template <typename T>
double placed_dot(const T* g, const T* k, const Place& p) {
  if (p.same()) return dot(g, k, p.in * p.taps);
  T total = 0;
  for (int64_t t = 0; t < p.taps; ++t) {
    const T* gt = g + p.where[t];
    const T* kt = k + t;
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < p.in; ++i) total += gt[i * p.block_taps] * kt[i * p.taps];
  }
  return total;
}

// The input moments repeated over each tap of a kernel with `taps` taps: [C_in * taps].
template <typename T>
std::vector<T> per_tap(const T* moments, int64_t channels, int64_t taps) {
  std::vector<T> out(channels * taps);
  for (int64_t i = 0; i < channels; ++i) std::fill_n(out.begin() + i * taps, taps, moments[i]);
  return out;
}

template <typename T>
struct Expanded {
  std::vector<T> mean, var;  // per branch: [C_in * taps]
};

template <typename T>
std::vector<Expanded<T>> expand(const std::vector<Branch<T>>& bs, const T* mean_x, const T* var_x,
                                int64_t channels) {
  std::vector<Expanded<T>> out;
  for (const auto& b : bs) {
    const int64_t taps = b.norm() ? b.kh * b.kw : 0;
    out.push_back({per_tap(mean_x, channels, taps), per_tap(var_x, channels, taps)});
  }
  return out;
}

template <typename T>
void merge_forward(const std::vector<Branch<T>>& bs, const Geometry& g, const T* mean_x,
                   const T* var_x, int64_t channels, T* kernel, T* bias, T* stats, T* factors) {
  const int64_t row = g.in_per_group * g.kh * g.kw, in = g.in_per_group;
  const auto ex = expand(bs, mean_x, var_x, channels);
  const auto ps = places(bs, g);
  at::parallel_for(0, g.out, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      std::fill(kernel + o * row, kernel + (o + 1) * row, T(0));  // in cache for the sums
      double shift = 0;
      int64_t n = 0;
      for (size_t j = 0; j < bs.size(); ++j) {
        const auto& b = bs[j];
        const auto& p = ps[j];
        const T* k = b.kernel + o * in * p.taps;
        const double s = b.at(b.scale, o, 1.0);
        double a = s, c = 0, r = 0;
        if (b.norm()) {
          const int64_t offset = g.input_offset(o) * p.taps;
          const auto [mean, var] = moments(k, ex[j].mean.data() + offset, ex[j].var.data() + offset,
                                           in * p.taps);
          c = mean;
          r = 1.0 / std::sqrt(var + b.eps);
          a = r * b.at(b.gamma, o, 1.0) * s;
          shift += b.at(b.beta, o, 0.0) * s - c * a;
          stats[(2 * n) * g.out + o] = T(c + b.at(b.bias, o, 0.0));
          stats[(2 * n + 1) * g.out + o] = T(var);
          ++n;
        } else {
          shift += b.at(b.bias, o, 0.0) * s;
        }
        add_scaled(kernel + o * row, k, T(a), p);
        factors[(3 * j) * g.out + o] = T(a);
        factors[(3 * j + 1) * g.out + o] = T(c);
        factors[(3 * j + 2) * g.out + o] = T(r);
      }
      bias[o] = T(shift);
    }
  });
}

template <typename T>
struct Grads {
  T *kernel, *bias, *gamma, *beta, *scale;  // nullptr where not wanted
};

// d L / d W of one output channel: dc E[X] + 2 dV V[X] W + a G, with E[X] and V[X] laid
// out like the row (`m`, `v`; unread where they are null: dc = dV = 0) and G read where
// W sits centred.
template <typename T>
void kernel_grad(T* dk, const T* k, const T* gw, const T* m, const T* v, double dc, double dvar,
                 double a, const Place& p) {
  const T tc = T(dc), tv = T(2 * dvar), ta = T(a);
  if (p.same()) {
    const int64_t n = p.in * p.taps;
    if (m == nullptr) {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) dk[t] = ta * gw[t];
    } else {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) dk[t] = tc * m[t] + tv * v[t] * k[t] + ta * gw[t];
    }
    return;
  }
  for (int64_t t = 0; t < p.taps; ++t) {
    const T* gt = gw + p.where[t];
    for (int64_t i = 0; i < p.in; ++i) {
      const int64_t e = i * p.taps + t;
      const T g = gt[i * p.block_taps];
      dk[e] = m == nullptr ? ta * g : tc * m[e] + tv * v[e] * k[e] + ta * g;
    }
  }
}

template <typename T>
void merge_backward(const std::vector<Branch<T>>& bs, const std::vector<Grads<T>>& gs,
                    const Geometry& g, const T* mean_x, const T* var_x, int64_t channels,
                    const T* factors, const T* grad_kernel, const T* grad_bias,
                    const std::vector<T*>& by_mean, const std::vector<T*>& by_var) {
  const int64_t row = g.in_per_group * g.kh * g.kw, in = g.in_per_group;
  const auto ex = expand(bs, mean_x, var_x, channels);
  const auto ps = places(bs, g);
  const int64_t blocks = (g.out + kOutBlock - 1) / kOutBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin * kOutBlock; o < std::min(g.out, end * kOutBlock); ++o) {
      const int64_t block = o / kOutBlock;
      const T* gw = grad_kernel + o * row;
      const double gb = grad_bias[o];
      for (size_t j = 0; j < bs.size(); ++j) {
        const auto& b = bs[j];
        const auto& d = gs[j];
        const auto& p = ps[j];
        const int64_t n = in * p.taps;
        const T* k = b.kernel + o * n;
        const double a = factors[(3 * j) * g.out + o], c = factors[(3 * j + 1) * g.out + o];
        const double r = factors[(3 * j + 2) * g.out + o];
        const double dot_a = placed_dot(gw, k, p);  // d L / d a through the kernel
        const double s = b.at(b.scale, o, 1.0);
        if (!b.norm()) {
          if (d.bias) d.bias[o] = T(gb * s);
          if (d.scale) d.scale[o] = T(dot_a + gb * b.at(b.bias, o, 0.0));
          if (d.kernel) kernel_grad<T>(d.kernel + o * n, k, gw, nullptr, nullptr, 0, 0, a, p);
          continue;
        }
        const double gamma = b.at(b.gamma, o, 1.0), da = dot_a - gb * c;
        const double dc = -gb * a, dvar = -0.5 * da * gamma * s * r * r * r;
        if (d.bias) d.bias[o] = T(0);  // b cancels in b - (c + b)
        if (d.gamma) d.gamma[o] = T(da * r * s);
        if (d.beta) d.beta[o] = T(gb * s);
        if (d.scale) d.scale[o] = T(da * r * gamma + gb * b.at(b.beta, o, 0.0));
        const int64_t offset = g.input_offset(o) * p.taps;
        T* bm = by_mean[j] + block * channels * p.taps + offset;
        T* bv = by_var[j] + block * channels * p.taps + offset;
        const T tc = T(dc), tv = T(dvar);
#pragma omp simd
        for (int64_t t = 0; t < n; ++t) {
          bm[t] += tc * k[t];
          bv[t] += tv * k[t] * k[t];
        }
        if (d.kernel) {
          kernel_grad(d.kernel + o * n, k, gw, ex[j].mean.data() + offset,
                      ex[j].var.data() + offset, dc, dvar, a, p);
        }
      }
    }
  });
}

Geometry geometry(const torch::Tensor& first, int64_t groups, int64_t kh, int64_t kw) {
  const int64_t out = first.size(0);
  return {out, first.size(1), out / groups, kh, kw};
}

// Every shape the loops index by: the branch kernels [out, in / groups, h <= kh, w <= kw]
// (centred: kh - h and kw - w even), their vectors [out], the input moments [in].
void check(const Flat& flat, const std::vector<double>& eps, const torch::Tensor& mean_x,
           const torch::Tensor& var_x, int64_t groups, int64_t kh, int64_t kw) {
  TORCH_CHECK(!eps.empty() && flat.size() == kSlots * eps.size(), "five tensors a branch");
  TORCH_CHECK(flat[0].has_value() && flat[0]->dim() == 4, "a branch needs a 4-d kernel");
  const int64_t out = flat[0]->size(0), in = flat[0]->size(1);
  TORCH_CHECK(groups > 0 && out % groups == 0, "out channels must split into the groups");
  for (const auto* m : {&mean_x, &var_x}) {
    TORCH_CHECK(m->device().is_cpu() && m->dim() == 1 && m->numel() == in * groups,
                "input moments must be CPU vectors of in / groups * groups values");
  }
  for (size_t j = 0; j < eps.size(); ++j) {
    const auto& k = flat[kSlots * j];
    TORCH_CHECK(k.has_value() && k->dim() == 4 && k->size(0) == out && k->size(1) == in,
                "every branch kernel must be [out, in / groups, h, w]");
    const int64_t h = k->size(2), w = k->size(3);
    TORCH_CHECK(h <= kh && w <= kw && (kh - h) % 2 == 0 && (kw - w) % 2 == 0,
                "a branch kernel must centre in the block's");
    for (int64_t s = 1; s < kSlots; ++s) {
      const auto& v = flat[kSlots * j + s];
      TORCH_CHECK(!v.has_value() || v->numel() == out, "branch vectors must hold out values");
    }
  }
  for (const auto& t : flat) {
    TORCH_CHECK(!t.has_value() || (t->device().is_cpu() && t->scalar_type() == mean_x.scalar_type()),
                "every tensor must be on the CPU, of one dtype");
  }
  TORCH_CHECK(var_x.scalar_type() == mean_x.scalar_type(), "every tensor must be of one dtype");
}

}  // namespace

// Returns the merged kernel [out, in / groups, kh, kw], its bias [out], each BN branch's
// estimated mean (with its bias) and variance [branches with BN, 2, out], and what
// backward reads: [branches, 3, out] (a, c, 1 / sqrt(V + eps)).
std::vector<torch::Tensor> estimated_merge_forward(const Flat& flat, const std::vector<double>& eps,
                                                   torch::Tensor mean_x, torch::Tensor var_x,
                                                   int64_t groups, int64_t kh, int64_t kw) {
  check(flat, eps, mean_x, var_x, groups, kh, kw);
  mean_x = mean_x.contiguous();
  var_x = var_x.contiguous();
  const auto g = geometry(*flat[0], groups, kh, kw);
  const auto opts = mean_x.options();
  int64_t norms = 0;
  for (double e : eps) norms += e >= 0;
  auto kernel = torch::empty({g.out, g.in_per_group, kh, kw}, opts);
  auto bias = torch::empty({g.out}, opts);
  auto stats = torch::empty({norms, 2, g.out}, opts);
  auto factors = torch::empty({int64_t(eps.size()), 3, g.out}, opts);
  AT_DISPATCH_FLOATING_TYPES(mean_x.scalar_type(), "repq_estimated_merge", [&] {
    Flat keep;
    merge_forward<scalar_t>(branches<scalar_t>(flat, eps, kh, kw, keep), g,
                            mean_x.data_ptr<scalar_t>(), var_x.data_ptr<scalar_t>(), mean_x.numel(),
                            kernel.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                            stats.data_ptr<scalar_t>(), factors.data_ptr<scalar_t>());
  });
  return {kernel, bias, stats, factors};
}

// The gradients of the five tensors of every branch (undefined, None in Python, where
// `wanted` is false or the tensor is absent), then those of mean_x and var_x.
std::vector<torch::Tensor> estimated_merge_backward(
    const Flat& flat, const std::vector<double>& eps, torch::Tensor mean_x, torch::Tensor var_x,
    int64_t groups, torch::Tensor factors, torch::Tensor grad_kernel, torch::Tensor grad_bias,
    const std::vector<bool>& wanted) {
  check(flat, eps, mean_x, var_x, groups, grad_kernel.size(2), grad_kernel.size(3));
  TORCH_CHECK(wanted.size() == flat.size(), "one flag a tensor");
  TORCH_CHECK(grad_kernel.dim() == 4 && grad_kernel.size(0) == flat[0]->size(0) &&
                  grad_kernel.size(1) == flat[0]->size(1) && grad_bias.numel() == flat[0]->size(0),
              "the gradients must be of the merged kernel and bias");
  TORCH_CHECK(factors.dim() == 3 && factors.size(0) == int64_t(eps.size()) && factors.size(1) == 3 &&
                  factors.size(2) == flat[0]->size(0) && factors.scalar_type() == mean_x.scalar_type(),
              "factors must be the forward's");
  mean_x = mean_x.contiguous();
  var_x = var_x.contiguous();
  factors = factors.contiguous();
  grad_kernel = grad_kernel.to(mean_x.scalar_type()).contiguous();
  grad_bias = grad_bias.to(mean_x.scalar_type()).contiguous();
  const auto g = geometry(*flat[0], groups, grad_kernel.size(2), grad_kernel.size(3));
  const int64_t channels = mean_x.numel(), blocks = (g.out + kOutBlock - 1) / kOutBlock;
  std::vector<torch::Tensor> grads(flat.size());
  for (size_t s = 0; s < flat.size(); ++s) {
    if (wanted[s] && flat[s].has_value()) grads[s] = torch::empty_like(*flat[s], at::MemoryFormat::Contiguous);
  }
  // per BN branch and block of output channels: sum_o dc_o W_o and sum_o dV_o W_o^2 laid
  // out per input channel and tap, summed over blocks and taps below (in a fixed order)
  std::vector<torch::Tensor> by_mean, by_var;
  for (size_t j = 0; j < eps.size(); ++j) {
    const auto& k = *flat[kSlots * j];
    const int64_t taps = eps[j] >= 0 ? k.size(2) * k.size(3) : 0;
    by_mean.push_back(torch::zeros({blocks, channels, taps}, mean_x.options()));
    by_var.push_back(torch::zeros({blocks, channels, taps}, mean_x.options()));
  }
  AT_DISPATCH_FLOATING_TYPES(mean_x.scalar_type(), "repq_estimated_merge_backward", [&] {
    Flat keep;
    const auto bs = branches<scalar_t>(flat, eps, g.kh, g.kw, keep);
    auto ptr = [](torch::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    std::vector<Grads<scalar_t>> gs;
    std::vector<scalar_t*> bm, bv;
    for (size_t j = 0; j < eps.size(); ++j) {
      gs.push_back({ptr(grads[kSlots * j]), ptr(grads[kSlots * j + 1]), ptr(grads[kSlots * j + 2]),
                    ptr(grads[kSlots * j + 3]), ptr(grads[kSlots * j + 4])});
      bm.push_back(by_mean[j].data_ptr<scalar_t>());
      bv.push_back(by_var[j].data_ptr<scalar_t>());
    }
    merge_backward<scalar_t>(bs, gs, g, mean_x.data_ptr<scalar_t>(), var_x.data_ptr<scalar_t>(),
                             channels, factors.data_ptr<scalar_t>(), grad_kernel.data_ptr<scalar_t>(),
                             grad_bias.data_ptr<scalar_t>(), bm, bv);
  });
  auto grad_mean_x = torch::zeros_like(mean_x), grad_var_x = torch::zeros_like(var_x);
  for (size_t j = 0; j < eps.size(); ++j) {
    grad_mean_x += by_mean[j].sum(at::IntArrayRef{0, 2});
    grad_var_x += by_var[j].sum(at::IntArrayRef{0, 2});
  }
  grads.push_back(grad_mean_x);
  grads.push_back(grad_var_x);
  return grads;
}
