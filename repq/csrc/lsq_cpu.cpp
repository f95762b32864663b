// LSQ's forward and backward on the CPU, one pass over the elements each.
//
// A tensor is seen as [rows, cols] with one step per row (a per-channel weight) or one
// step for all (rows == 1). Every element is computed as the eager reference in
// repq/quant/lsq.py computes it: v = x / s, r = nearbyint(v) (halves to even, as
// torch.round), the range test of aten's hardtanh_backward on r against the half-integer
// bounds, so outputs and input gradients are bit-equal to it; the step's gradient is
// summed in double, in fixed blocks, so it does not depend on the number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 14;  // elements of one task
constexpr int64_t kLanes = 16;       // independent partial sums (one vector register)

struct Layout {
  int64_t rows, cols, blocks_per_row;
  Layout(int64_t rows_, int64_t numel)
      : rows(rows_), cols(numel / rows_), blocks_per_row((numel / rows_ + kBlock - 1) / kBlock) {}
  int64_t tasks() const { return rows * blocks_per_row; }
  int64_t grain() const { return std::max<int64_t>(1, kBlock / std::max<int64_t>(1, std::min(cols, kBlock))); }
};

template <typename Body>
void for_each_block(const Layout& layout, const Body& body) {
  at::parallel_for(0, layout.tasks(), layout.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / layout.blocks_per_row;
      const int64_t start = (task % layout.blocks_per_row) * kBlock;
      const int64_t offset = row * layout.cols;
      body(task, row, offset + start, offset + std::min(layout.cols, start + kBlock));
    }
  });
}

template <typename T>
inline T clamp_code(T r, T qmin, T qmax) {
  return std::min(std::max(r, qmin), qmax);  // NaN stays NaN, as torch.clamp
}

template <typename T>
void fake_quantize_kernel(const T* x, const T* step, T* out, const Layout& layout, T qmin, T qmax) {
  for_each_block(layout, [&](int64_t, int64_t row, int64_t start, int64_t stop) {
    const T s = step[row];
    for (int64_t i = start; i < stop; ++i) {
      out[i] = clamp_code(std::nearbyint(x[i] / s), qmin, qmax) * s;
    }
  });
}

template <typename T>
inline T step_term(T x, T g, T s, T lo, T hi, T qmin, T qmax, T& grad_x) {
  const T v = x / s;
  const T r = std::nearbyint(v);
  const bool outside = r <= lo || r >= hi;  // aten::hardtanh_backward's test
  grad_x = outside ? T(0) : g;
  return outside ? g * clamp_code(r, qmin, qmax) : g * (r - v);
}

template <typename T>
void lsq_backward_kernel(const T* x, const T* grad, const T* step, T* grad_x, double* partial,
                         const Layout& layout, T qmin, T qmax) {
  const T lo = qmin - T(0.5), hi = qmax + T(0.5);
  for_each_block(layout, [&](int64_t task, int64_t row, int64_t start, int64_t stop) {
    const T s = step[row];
    double lanes[kLanes] = {0};
    int64_t i = start;
    for (; i + kLanes <= stop; i += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) {
        lanes[k] += step_term(x[i + k], grad[i + k], s, lo, hi, qmin, qmax, grad_x[i + k]);
      }
    }
    double total = 0;
    for (; i < stop; ++i) total += step_term(x[i], grad[i], s, lo, hi, qmin, qmax, grad_x[i]);
    for (int64_t k = 0; k < kLanes; ++k) total += lanes[k];
    partial[task] = total;
  });
}

void check(const torch::Tensor& x, const torch::Tensor& step) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "x must be a contiguous CPU tensor");
  TORCH_CHECK(step.is_contiguous() && step.scalar_type() == x.scalar_type(),
              "step must be contiguous, of x's dtype");
  TORCH_CHECK(step.numel() > 0 && x.numel() % step.numel() == 0,
              "x must split into one row per step");
}

}  // namespace

// clamp(round(x / step), qmin, qmax) * step into out (which may be x).
void fake_quantize(torch::Tensor x, torch::Tensor step, int64_t qmin, int64_t qmax, torch::Tensor out) {
  check(x, step);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "out must be like x");
  const Layout layout(step.numel(), x.numel());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "repq_fake_quantize", [&] {
    fake_quantize_kernel<scalar_t>(x.data_ptr<scalar_t>(), step.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), layout, scalar_t(qmin), scalar_t(qmax));
  });
}

// Writes d L / d x into grad_x (which may be grad) and returns sum(grad * d out / d step)
// per step, in x's dtype.
torch::Tensor lsq_backward(torch::Tensor x, torch::Tensor grad, torch::Tensor step, int64_t qmin,
                           int64_t qmax, torch::Tensor grad_x) {
  check(x, step);
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "grad must be like x");
  TORCH_CHECK(grad_x.is_contiguous() && grad_x.sizes() == x.sizes() && grad_x.scalar_type() == x.scalar_type(),
              "grad_x must be like x");
  const Layout layout(step.numel(), x.numel());
  std::vector<double> partial(layout.tasks(), 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "repq_lsq_backward", [&] {
    lsq_backward_kernel<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                  step.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                                  partial.data(), layout, scalar_t(qmin), scalar_t(qmax));
  });
  auto sums = torch::empty({layout.rows}, torch::dtype(torch::kFloat64));
  auto* out = sums.data_ptr<double>();
  for (int64_t row = 0; row < layout.rows; ++row) {
    double total = 0;
    for (int64_t b = 0; b < layout.blocks_per_row; ++b) total += partial[row * layout.blocks_per_row + b];
    out[row] = total;
  }
  return sums.to(x.scalar_type());
}
