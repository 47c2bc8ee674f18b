// MUFU and FMA throughput on one GPU: cycles per warp instruction per SM sub-partition (SMSP) of
// `tanh.approx`, `ex2.approx` (f32 and the paired f16x2 / bf16x2 forms) and `fma.rn.f32`, with 1, 2
// and 4 warps per SMSP, eight independent chains per thread. It tells whether a softmax's
// transcendental work or its instruction count binds (docs/perf.md, "The score stage", 2026-11-30).
//
//   nvcc -arch=sm_90a -O3 -o mufu benches/mufu.cu && ./mufu
#include <cstdio>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define N_ITER 4096
#define CHAINS 8

template <int OP>
__device__ __forceinline__ unsigned apply(unsigned x) {
  unsigned y;
  if (OP == 0) asm volatile("tanh.approx.f32 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 1) asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 2) asm volatile("ex2.approx.f16x2 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 3) asm volatile("ex2.approx.ftz.bf16x2 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 4) asm volatile("tanh.approx.f16x2 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 5) asm volatile("tanh.approx.bf16x2 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 7) asm volatile("ex2.approx.f32 %0, %1;" : "=r"(y) : "r"(x));
  if (OP == 8) asm volatile("{ .reg .f32 a; mov.b32 a, %1; fma.rn.f32 a, a, a, a; mov.b32 %0, a; }" : "=r"(y) : "r"(x));
  return y;
}

template <int OP>
__global__ void bench(unsigned *out, long long *cycles, unsigned seed) {
  unsigned v[CHAINS];
  for (int c = 0; c < CHAINS; c++) v[c] = 0x3c003c00u ^ (seed * (threadIdx.x + c)) & 0x00ff00ffu;
  if (OP == 0 || OP == 1 || OP == 7 || OP == 8) for (int c = 0; c < CHAINS; c++) v[c] = 0x3e000000u + ((seed * (threadIdx.x + c)) & 0xffff);
  __syncthreads();
  long long t0 = clock64();
  for (int i = 0; i < N_ITER; i++) {
#pragma unroll
    for (int c = 0; c < CHAINS; c++) v[c] = apply<OP>(v[c]);
  }
  __syncthreads();
  long long t1 = clock64();
  unsigned acc = 0;
  for (int c = 0; c < CHAINS; c++) acc ^= v[c];
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

template <int OP>
void run(const char *name, int warps_per_smsp, unsigned *out, long long *cyc) {
  int threads = 128 * warps_per_smsp;
  bench<OP><<<132, threads>>>(out, cyc, 12345);
  bench<OP><<<132, threads>>>(out, cyc, 12345);
  cudaDeviceSynchronize();
  long long h[132];
  cudaMemcpy(h, cyc, sizeof(h), cudaMemcpyDeviceToHost);
  double mean = 0; for (int i = 0; i < 132; i++) mean += h[i]; mean /= 132;
  double instr_per_smsp = (double)N_ITER * CHAINS * warps_per_smsp;
  printf("%-22s warps/SMSP %d: %.2f cycles per warp instruction per SMSP\n", name, warps_per_smsp, mean / instr_per_smsp);
}

int main() {
  unsigned *out; long long *cyc;
  cudaMalloc(&out, 132 * 1024 * 4); cudaMalloc(&cyc, 132 * 8);
  for (int w = 1; w <= 4; w *= 2) {
    run<0>("tanh.approx.f32", w, out, cyc);
    run<1>("ex2.approx.ftz.f32", w, out, cyc);
    run<7>("ex2.approx.f32", w, out, cyc);
    run<2>("ex2.approx.f16x2", w, out, cyc);
    run<3>("ex2.approx.ftz.bf16x2", w, out, cyc);
    run<4>("tanh.approx.f16x2", w, out, cyc);
    run<5>("tanh.approx.bf16x2", w, out, cyc);
    run<8>("fma.rn.f32", w, out, cyc);
  }
  printf("err: %s\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}
