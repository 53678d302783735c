/* libcublas.so.12 stand-in for faiss-gpu 1.15.1 on a machine that has only cuBLAS 13 (the lent GPU
 * image: torch cu130). faiss calls eight cuBLAS functions, all versioned @libcublas.so.12; this library
 * exports them under that version and tail-jumps to the same functions of libcublas.so.13, whose
 * signatures are unchanged between the two majors. It saves carrying the 580 MB cuBLAS-12 wheel
 * (ten extra device calls). Build on the device machine (scripts/gpu/device_install.sh):
 *   gcc -shared -fPIC -O2 -o libcublas.so.12 -Wl,-soname,libcublas.so.12 \
 *       -Wl,--version-script=cublas12.map cublas12_shim.c -ldl
 * The library to forward to is $RAGICL_CUBLAS13 (a path), else "libcublas.so.13" from the loader path.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define FORWARD(name)                                                              \
    __attribute__((visibility("hidden"))) void *p_##name;                         \
    __asm__(".globl " #name "\n.type " #name ",@function\n" #name ":\n"           \
            "    jmp *p_" #name "(%rip)\n");

FORWARD(cublasCreate_v2)
FORWARD(cublasDestroy_v2)
FORWARD(cublasSetStream_v2)
FORWARD(cublasSetMathMode)
FORWARD(cublasGetMathMode)
FORWARD(cublasSgemmEx)
FORWARD(cublasGemmEx)
FORWARD(cublasGemmStridedBatchedEx)

static void *must(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "cublas12_shim: %s not found in cuBLAS 13: %s\n", name, dlerror());
        abort();
    }
    return p;
}

__attribute__((constructor)) static void load(void) {
    const char *path = getenv("RAGICL_CUBLAS13");
    void *lib = dlopen(path && *path ? path : "libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
        fprintf(stderr, "cublas12_shim: cannot load cuBLAS 13 (%s): %s\n", path ? path : "libcublas.so.13",
                dlerror());
        abort();
    }
    p_cublasCreate_v2 = must(lib, "cublasCreate_v2");
    p_cublasDestroy_v2 = must(lib, "cublasDestroy_v2");
    p_cublasSetStream_v2 = must(lib, "cublasSetStream_v2");
    p_cublasSetMathMode = must(lib, "cublasSetMathMode");
    p_cublasGetMathMode = must(lib, "cublasGetMathMode");
    p_cublasSgemmEx = must(lib, "cublasSgemmEx");
    p_cublasGemmEx = must(lib, "cublasGemmEx");
    p_cublasGemmStridedBatchedEx = must(lib, "cublasGemmStridedBatchedEx");
}
