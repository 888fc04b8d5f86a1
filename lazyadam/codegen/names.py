"""The names a generated kernel may take (`generate(spec, target, symbol)`, `generate --name`).

A kernel's function is declared in its header and defined in its source, beside the templates' own
identifiers, the headers those files include and, for CUDA, C++. A name that is one of these would
not compile, or would quietly change what the other name means. The templates' identifiers are read
from a rendering, never listed here, so that the check follows the templates as they change:

    fixed     identifiers of the source and header rendered under the spec's own symbol, less those
              built from that symbol (`<symbol>_multi`, `<SYMBOL>_H`, ...)
    built     those built from the symbol, with the chosen name in its place (the name itself too)
    refused   a name whose built names include a fixed identifier, a C or C++ keyword, a name that C
              reserves, or a name declared by a header that generated files include (`LIBRARY`)
"""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while bool true false alignas alignof static_assert "
    "thread_local nullptr constexpr typeof typeof_unqual".split())

#: CUDA sources are C++, and C++ code includes the headers.
CXX_KEYWORDS = frozenset(
    "and and_eq asm bitand bitor catch char8_t char16_t char32_t class compl concept consteval "
    "constinit const_cast co_await co_return co_yield decltype delete dynamic_cast explicit export "
    "friend mutable namespace new noexcept not not_eq operator or or_eq private protected public "
    "reinterpret_cast requires static_cast template this throw try typeid typename using virtual "
    "wchar_t xor xor_eq std".split())

_MATH = ("acos asin atan atan2 cos sin tan acosh asinh atanh cosh sinh tanh exp exp2 expm1 frexp "
         "ilogb ldexp log log10 log1p log2 logb modf scalbn scalbln cbrt fabs hypot pow sqrt erf "
         "erfc lgamma tgamma ceil floor nearbyint rint lrint llrint round lround llround trunc "
         "fmod remainder remquo copysign nan nextafter nexttoward fdim fmax fmin fma j0 j1 jn y0 "
         "y1 yn gamma drem finite significand exp10 sincos pow10").split()

#: Names declared by the headers that generated files include, by header; each math function also
#: comes with its `f` and `l` variants.
LIBRARY = {
    "math.h": frozenset(
        [f"{fn}{suffix}" for fn in _MATH for suffix in ("", "f", "l")]
        + "isfinite isinf isnan isnormal signbit fpclassify isgreater isgreaterequal isless "
          "islessequal islessgreater isunordered HUGE_VAL HUGE_VALF HUGE_VALL INFINITY NAN "
          "FP_INFINITE FP_NAN FP_NORMAL FP_SUBNORMAL FP_ZERO FP_FAST_FMA FP_FAST_FMAF FP_ILOGB0 "
          "FP_ILOGBNAN MATH_ERRNO MATH_ERREXCEPT math_errhandling".split()),
    "stdlib.h": frozenset(
        "malloc calloc realloc free aligned_alloc posix_memalign alloca abort exit atexit "
        "at_quick_exit quick_exit getenv setenv unsetenv putenv system atoi atol atoll atof strtol "
        "strtoll strtoul strtoull strtod strtof strtold qsort bsearch abs labs llabs div ldiv "
        "lldiv rand srand random srandom mblen mbtowc wctomb mbstowcs wcstombs mkstemp realpath "
        "NULL EXIT_SUCCESS EXIT_FAILURE RAND_MAX MB_CUR_MAX".split()),
    "string.h": frozenset(
        "memcpy memmove memset memcmp memchr strcpy strncpy strcat strncat strcmp strncmp strchr "
        "strrchr strstr strlen strdup strndup strerror strtok strspn strcspn strpbrk strcoll "
        "strxfrm".split()),
    "float.h": frozenset(
        [f"{kind}_{limit}" for kind in ("FLT", "DBL", "LDBL") for limit in (
            "MIN", "MAX", "EPSILON", "DIG", "MANT_DIG", "MIN_EXP", "MAX_EXP", "MIN_10_EXP",
            "MAX_10_EXP", "TRUE_MIN", "DECIMAL_DIG", "HAS_SUBNORM")]
        + ["FLT_RADIX", "FLT_ROUNDS", "FLT_EVAL_METHOD", "DECIMAL_DIG"]),
    "stdint.h": frozenset("SIZE_MAX PTRDIFF_MIN PTRDIFF_MAX SIG_ATOMIC_MIN SIG_ATOMIC_MAX "
                          "WCHAR_MIN WCHAR_MAX WINT_MIN WINT_MAX".split()),
    "stdio.h": frozenset(
        "printf fprintf sprintf snprintf dprintf vprintf vfprintf vsprintf vsnprintf scanf fscanf "
        "sscanf puts fputs putc fputc putchar gets fgets getc fgetc getchar getline ungetc fopen "
        "freopen fdopen fclose fflush fread fwrite fseek ftell rewind fgetpos fsetpos clearerr "
        "feof ferror fileno perror remove rename tmpfile tmpnam setbuf setvbuf popen pclose FILE "
        "EOF BUFSIZ FILENAME_MAX FOPEN_MAX L_tmpnam SEEK_SET SEEK_CUR SEEK_END TMP_MAX stdin "
        "stdout stderr".split()),
    "cuda_runtime.h": frozenset(
        "threadIdx blockIdx blockDim gridDim warpSize dim3 min max rsqrt rsqrtf rcbrt rcbrtf sinpi "
        "sinpif cospi cospif sincospi sincospif erfinv erfinvf erfcinv erfcinvf normcdf normcdff "
        "normcdfinv normcdfinvf norm normf rnorm rnormf rhypot rhypotf saturate".split()),
}

#: Families of names, as (pattern, owner): a name matching the pattern belongs to the owner.
RESERVED = (
    (re.compile(r"__\w*|_[A-Z]\w*"),
     "C, which reserves names that start with __ or _ and a capital"),
    (re.compile(r"\w*_t"), "POSIX, which reserves names ending in _t (stdint.h's int64_t, ...)"),
    (re.compile(r"U?INT\w*_(MAX|MIN|C)"), "<stdint.h> (INT64_MAX, UINT32_C, ...)"),
    (re.compile(r"M_\w+"), "<math.h> (M_PI, ...)"),
    (re.compile(r"omp_\w*"), "<omp.h> (omp_*)"),
    (re.compile(r"(cuda|cu)[A-Z]\w*|CU[a-z]\w*|CU_\w+|CUDART_\w+|CUDA_(VERSION|SUCCESS|ERROR_\w+)"),
     "the CUDA runtime and driver (cudaMalloc, cuInit, CUresult, CUDA_ERROR_*, ...)"),
    (re.compile(r"atomic[A-Z]\w*"), "CUDA's atomic functions (atomicAdd, ...)"),
    (re.compile(r"(make_)?(u?char|u?short|u?int|u?long|u?longlong|float|double)[1-4]"),
     "CUDA's vector types (float4, make_float4, ...)"),
    (re.compile(r"main"), "C, as the entry point of a program"),
)

_SKIPPED = re.compile(r"""//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'"""
                      r"|^[ \t]*#[ \t]*(?:(?:include|pragma)\b[^\n]*|\w+)", re.S | re.M)
_TOKEN = re.compile(r"\.?[0-9](?:[eEpP][+-]|[A-Za-z0-9_.])*|([A-Za-z_][A-Za-z0-9_]*)")


def identifiers(text: str) -> set[str]:
    """The C identifiers (and macro names) of a C or CUDA file.

    Comments, string and character literals, numbers (`0.9f`, `1e-8`), preprocessor directives
    (`define`, `ifdef`) and the words of `#include` and `#pragma` lines are left out: they name
    nothing in the file's scope.
    """
    code = _SKIPPED.sub(" ", text)
    return {m.group(1) for m in _TOKEN.finditer(code) if m.group(1)}


def check_symbol(name: str, own: tuple[str, str]) -> str:
    """Returns `name` if a generated kernel can take it; raises ValueError saying why not otherwise.

    Args:
        name: the wanted function name.
        own: `(symbol, text)`: the spec's own symbol, and its source and header rendered under it.

    Raises:
        ValueError: not a C identifier; a C or C++ keyword; reserved by C or POSIX; declared by a
            header the generated files include; or a name that the generated files already use,
            by itself or in a name built from it (e.g. `<name>_multi`).
    """
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"symbol {name!r} is not a C identifier (letters, digits and _, "
                         "not starting with a digit)")
    symbol, text = own
    found = identifiers(text)
    derived = {i for i in found if symbol in i or symbol.upper() in i}
    fixed = found - derived
    built = {name} | {i.replace(symbol, name).replace(symbol.upper(), name.upper())
                      for i in derived}
    for taken in sorted(built, key=lambda i: (i != name, i)):
        owner = _owner(taken, fixed)
        if owner:
            what = ("" if taken == name
                    else f" would make the generated files define {taken!r}, which")
            raise ValueError(f"symbol {name!r}{what} is {owner}; choose another name")
    return name


def _owner(name: str, fixed: set[str]) -> str | None:
    """Who already has `name`, in words, or None when it is free."""
    if name in C_KEYWORDS:
        return "a C keyword"
    if name in CXX_KEYWORDS:
        return "a C++ keyword (CUDA sources are C++, and C++ code includes the headers)"
    for header, names in LIBRARY.items():
        if name in names:
            return f"declared by <{header}>, which generated files include"
    for pattern, owner in RESERVED:
        if pattern.fullmatch(name):
            return f"reserved by {owner}"
    if name in fixed:
        return "already an identifier of the generated source or header"
    return None
