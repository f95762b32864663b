// Per-channel mean and biased variance of an [N, C, H, W] tensor over (N, H, W), and
// their gradient, one pass each (repq/reparam/stats.py: ChannelMoments's torch ops are
// the reference).
//
// The forward sums x - s and (x - s)^2, with s the channel's first value (a shift that
// keeps the one-pass variance free of cancellation): each row of H * W values in T, one
// partial sum a SIMD lane, the rows in double. Backward writes
// dy = dm / n + 2 dv (y - m) / n in one pass.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

template <typename T>
void moments_kernel(const T* y, T* mean, T* var, int64_t batch, int64_t channels, int64_t size) {
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const T shift = y[c * size];
      double sum = 0, squares = 0;
      for (int64_t n = 0; n < batch; ++n) {
        const T* row = y + (n * channels + c) * size;
        T s = 0, q = 0;
#pragma omp simd reduction(+ : s, q)
        for (int64_t i = 0; i < size; ++i) {
          const T d = row[i] - shift;
          s += d;
          q += d * d;
        }
        sum += s;
        squares += q;
      }
      const double count = double(batch * size);
      mean[c] = T(double(shift) + sum / count);
      var[c] = T(std::max(0.0, (squares - sum * sum / count) / count));
    }
  });
}

template <typename T>
void moments_backward_kernel(const T* y, const T* mean, const T* grad_mean, const T* grad_var,
                             T* out, int64_t batch, int64_t channels, int64_t size) {
  const double inv = 1.0 / double(batch * size);
  at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t c = nc % channels;
      const T scale = T(2.0 * double(grad_var[c]) * inv);
      const T offset = T(double(grad_mean[c]) * inv);
      const T centre = mean[c];  // centred first, as the reference: no cancellation
      const T* row = y + nc * size;
      T* target = out + nc * size;
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) target[i] = (row[i] - centre) * scale + offset;
    }
  });
}

void check_4d(const torch::Tensor& y) {
  TORCH_CHECK(y.device().is_cpu() && y.is_contiguous() && y.dim() == 4 && y.numel() > 0,
              "y must be a non-empty contiguous CPU tensor [N, C, H, W]");
}

}  // namespace

std::vector<torch::Tensor> channel_moments(torch::Tensor y) {
  check_4d(y);
  const int64_t batch = y.size(0), channels = y.size(1), size = y.size(2) * y.size(3);
  auto mean = torch::empty({channels}, y.options());
  auto var = torch::empty({channels}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "repq_channel_moments", [&] {
    moments_kernel<scalar_t>(y.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                             var.data_ptr<scalar_t>(), batch, channels, size);
  });
  return {mean, var};
}

torch::Tensor channel_moments_backward(torch::Tensor y, torch::Tensor mean, torch::Tensor grad_mean,
                                       torch::Tensor grad_var) {
  check_4d(y);
  const int64_t batch = y.size(0), channels = y.size(1), size = y.size(2) * y.size(3);
  for (const auto& t : {mean, grad_mean, grad_var}) {
    TORCH_CHECK(t.is_contiguous() && t.numel() == channels && t.scalar_type() == y.scalar_type(),
                "per-channel tensors of y's dtype");
  }
  auto out = torch::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "repq_channel_moments_backward", [&] {
    moments_backward_kernel<scalar_t>(y.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                                      grad_mean.data_ptr<scalar_t>(), grad_var.data_ptr<scalar_t>(),
                                      out.data_ptr<scalar_t>(), batch, channels, size);
  });
  return out;
}
