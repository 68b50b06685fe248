// The feature macros that sleef.h and ATen test, which a `#pragma GCC target` does not
// define: included right after the pragma of a cap_*.cpp file. AVX2 + FMA (+ F16C) always;
// AVX512 F/BW/VL/DQ where the file defines FUSED_RNN_CAP_AVX512 first.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifdef FUSED_RNN_CAP_AVX512
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define FUSED_RNN_VEC_REGS 32
#endif
