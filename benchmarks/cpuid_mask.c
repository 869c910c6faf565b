/* cpuid_mask.c: make the programs of one process tree see an older x86-64 CPU, at native speed.

   Build:  gcc -O2 -shared -fPIC -o cpuid_mask.so benchmarks/cpuid_mask.c -ldl
   Use:    EDGEQ_CPUID_MASK=avx2 LD_PRELOAD=$PWD/cpuid_mask.so python ...

   Why: ONNX Runtime's MLAS, oneDNN, fbgemm, CTranslate2 and numpy choose their kernels by the
   CPUID instruction, and none of them takes a setting to cap the instruction set. On an AMX Xeon
   they all run AMX / AVX-512 kernels, so what edgeq and its peers do on an AVX2-only CPU (a
   Raspberry Pi's x86 cousins: older mini PCs, AMD Zen 2) cannot be seen there. qemu-user can show
   another CPU, but 50x slower, and its speed means nothing.

   How: Linux lets a process make CPUID fault (arch_prctl ARCH_SET_CPUID, on CPUs with "CPUID
   faulting": the cpuid_fault flag in /proc/cpuinfo). This library, loaded first, reads the real
   CPUID leaves into a table, clears the bits of the instruction-set extensions the chosen CPU
   lacks, turns faulting on, and answers each CPUID from the table in its SIGSEGV handler. The
   setting is inherited by threads and forks and reset by execve, where LD_PRELOAD loads this
   library again. Whatever glibc chose before main (its memcpy variant) stays the host's.

   EDGEQ_CPUID_MASK:
     avx2  AVX2 + FMA + F16C, no AVX-512, no AVX-VNNI, no AMX (Haswell-class, AMD Zen 2)
     vnni  AVX-512 with VNNI and BF16, no AMX, no AVX512-FP16, no AVX-VNNI (AMD Zen 4-class)
   EDGEQ_CPUID_MASK_LOG=1 prints, at exit, how many CPUIDs were answered (to stderr).

   Another SIGSEGV handler installed later (Python's faulthandler, for one) is kept and called
   for every fault that is not a CPUID, so crashes still reach it. If faulting cannot be turned
   on, the library says so on stderr and exits with 3: a run that believes it is masked and is
   not would report the host's kernels under another CPU's name. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

struct leaf { uint32_t leaf, sub, r[4]; };
static struct leaf table[4096]; /* 0x24 basic leaves, 16 of them with 64 subleaves */
static int entries;
static volatile long answered;
static struct sigaction chained; /* the handler a later sigaction() asked for */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

/* Leaves whose answer depends on the subleaf in ECX; every other leaf ignores ECX. */
static int has_subleaves(uint32_t leaf) {
    switch (leaf) {
    case 4: case 7: case 0xb: case 0xd: case 0xf: case 0x10: case 0x12: case 0x14:
    case 0x17: case 0x18: case 0x1d: case 0x1e: case 0x1f: case 0x20: case 0x23: case 0x24:
    case 0x8000001d: case 0x80000020: case 0x80000026:
        return 1;
    }
    return 0;
}

static void record(uint32_t leaf) {
    int subs = has_subleaves(leaf) ? 64 : 1;
    for (int s = 0; s < subs && entries < (int)(sizeof table / sizeof *table); s++) {
        struct leaf *e = &table[entries++];
        e->leaf = leaf, e->sub = s;
        __cpuid_count(leaf, s, e->r[0], e->r[1], e->r[2], e->r[3]);
    }
}

static struct leaf *find(uint32_t leaf, uint32_t sub) {
    if (!has_subleaves(leaf)) sub = 0;
    for (int i = 0; i < entries; i++)
        if (table[i].leaf == leaf && table[i].sub == sub) return &table[i];
    return NULL;
}

#define BIT(n) (1u << (n))

static void mask(const char *cpu) {
    struct leaf *l1 = find(1, 0), *l7 = find(7, 0), *l71 = find(7, 1);
    int avx2 = !strcmp(cpu, "avx2");
    if (l7) {
        /* leaf 7.0: EBX, ECX, EDX */
        if (avx2) {
            l7->r[1] &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
            l7->r[2] &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));  /* VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
            l7->r[3] &= ~(BIT(2) | BIT(3) | BIT(8));                        /* 4VNNIW, 4FMAPS, VP2INTERSECT */
        }
        l7->r[3] &= ~(BIT(22) | BIT(23) | BIT(24) | BIT(25));  /* AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
    }
    if (l71) {
        /* leaf 7.1 EAX: AVX-VNNI (4), AVX512-BF16 (5), AMX-FP16 (21), AVX-IFMA (23);
           EDX: AVX-VNNI-INT8 (4), AVX-NE-CONVERT (5), AMX-COMPLEX (8) */
        l71->r[0] &= ~(BIT(4) | BIT(21) | BIT(23) | (avx2 ? BIT(5) : 0));
        l71->r[3] &= ~(BIT(4) | BIT(5) | BIT(8));
    }
    (void)l1;
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        struct leaf *e = find((uint32_t)g[REG_RAX], (uint32_t)g[REG_RCX]);
        uint32_t r[4] = {0, 0, 0, 0};
        if (e) memcpy(r, e->r, sizeof r);
        g[REG_RAX] = r[0], g[REG_RBX] = r[1], g[REG_RCX] = r[2], g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        answered++;
        return;
    }
    /* not a CPUID: the handler someone else asked for, or the default action */
    if (chained.sa_flags & SA_SIGINFO) {
        if (chained.sa_sigaction) { chained.sa_sigaction(sig, info, context); return; }
    } else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN) {
        chained.sa_handler(sig);
        return;
    }
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    real_sigaction(SIGSEGV, &dfl, NULL);  /* returning re-runs the instruction, which now kills */
}

/* Keep our handler first: a later SIGSEGV handler is chained, not installed over it. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !entries) return real_sigaction(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    if (sig != SIGSEGV || !entries) {
        static sighandler_t (*real_signal)(int, sighandler_t);
        if (!real_signal) real_signal = dlsym(RTLD_NEXT, "signal");
        return real_signal(sig, handler);
    }
    struct sigaction act = {.sa_handler = handler}, old;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) < 0) return SIG_ERR;
    return old.sa_handler;
}

static void report(void) {
    fprintf(stderr, "cpuid_mask: %ld CPUID instructions answered as %s\n", answered,
            getenv("EDGEQ_CPUID_MASK"));
}

__attribute__((constructor)) static void start(void) {
    const char *cpu = getenv("EDGEQ_CPUID_MASK");
    if (!cpu || !*cpu) return;
    if (strcmp(cpu, "avx2") && strcmp(cpu, "vnni")) {
        fprintf(stderr, "cpuid_mask: EDGEQ_CPUID_MASK=%s: expected avx2 or vnni\n", cpu);
        _exit(3);
    }
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    uint32_t a, b, c, d;
    __cpuid(0, a, b, c, d);
    for (uint32_t leaf = 0; leaf <= a && leaf < 0x40; leaf++) record(leaf);
    __cpuid(0x80000000, a, b, c, d);
    for (uint32_t leaf = 0x80000000; leaf <= a && leaf < 0x80000040; leaf++) record(leaf);
    for (uint32_t leaf = 0x40000000; leaf < 0x40000010; leaf++) record(leaf);
    mask(cpu);
    struct sigaction act = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_NODEFER};
    sigemptyset(&act.sa_mask);
    struct sigaction previous;
    if (real_sigaction(SIGSEGV, &act, &previous) || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0)) {
        fprintf(stderr, "cpuid_mask: this CPU or kernel cannot make CPUID fault (no cpuid_fault flag); "
                        "nothing can be masked\n");
        _exit(3);
    }
    chained = previous;
    if (getenv("EDGEQ_CPUID_MASK_LOG")) atexit(report);
}
