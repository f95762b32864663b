// The Python module of repq's CPU kernels (lsq_cpu.cpp, moments_cpu.cpp, merge_cpu.cpp).
#include <torch/extension.h>

#include <optional>
#include <vector>

void fake_quantize(torch::Tensor x, torch::Tensor step, int64_t qmin, int64_t qmax, torch::Tensor out);
torch::Tensor lsq_backward(torch::Tensor x, torch::Tensor grad, torch::Tensor step, int64_t qmin,
                           int64_t qmax, torch::Tensor grad_x);
std::vector<torch::Tensor> channel_moments(torch::Tensor y);
torch::Tensor channel_moments_backward(torch::Tensor y, torch::Tensor mean, torch::Tensor grad_mean,
                                       torch::Tensor grad_var);
std::vector<torch::Tensor> estimated_merge_forward(
    const std::vector<std::optional<torch::Tensor>>& flat, const std::vector<double>& eps,
    torch::Tensor mean_x, torch::Tensor var_x, int64_t groups, int64_t kh, int64_t kw);
std::vector<torch::Tensor> estimated_merge_backward(
    const std::vector<std::optional<torch::Tensor>>& flat, const std::vector<double>& eps,
    torch::Tensor mean_x, torch::Tensor var_x, int64_t groups, torch::Tensor factors,
    torch::Tensor grad_kernel, torch::Tensor grad_bias, const std::vector<bool>& wanted);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fake_quantize", &fake_quantize, "LSQ's forward into out");
  m.def("lsq_backward", &lsq_backward, "LSQ's input gradient into grad_x; the step sums");
  m.def("channel_moments", &channel_moments, "per-channel mean and biased variance");
  m.def("channel_moments_backward", &channel_moments_backward, "their input gradient");
  m.def("estimated_merge_forward", &estimated_merge_forward,
        "a block's kernel and bias under S3/S8 statistics");
  m.def("estimated_merge_backward", &estimated_merge_backward, "its gradients");
}
