// Kernels that test the launch machinery, not the op.
//
// fusegate_late_writer: the predecessor a chained (PDL) launch must wait for. It lets the next
// grid start at once, spins for `spin` clock cycles, and only then copies n16 16-byte units from
// src to dst (the next kernel's x). A chained kernel that reads x before its griddepcontrol.wait
// sees the old x. Launch rule: any grid, any block size.
#include "common.cuh"

extern "C" __global__ void fusegate_late_writer(uint4* dst, const uint4* src, int n16, long long spin) {
    fg::griddep_launch_dependents();
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += gridDim.x * blockDim.x) dst[i] = src[i];
}
