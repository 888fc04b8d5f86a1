/* Two LazyAdam steps through kernels made by `lazyadam generate`, checked against known values.
 *
 * Step 1 is the known step of lazyadam's SEMANTICS.md (MindSpore's own test): var = m = v = 1,
 * lr = 0.001, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, beta powers 0.9 and 0.999. Step 2 continues
 * with the beta powers of t = 2 (0.81, 0.998001); its values come from lazyadam's float64 numpy
 * reference (tests/reference.py). Exits 0 when every number is within tolerance, 1 otherwise.
 *
 * Needs nothing but the generated sources, a C99 compiler and libm; OpenMP is optional.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lazyadam_dense_f32.h"
#include "lazyadam_sparse_f32_i64.h"
#include "ship_sparse_nesterov.h"

#define ROWS 3
#define ROW_SIZE 2
#define RTOL 1e-6

static int failures = 0;

static void expect(const char *what, const float *got, int count, const double *want)
{
    for (int i = 0; i < count; i++) {
        if (fabs(got[i] - want[i]) > RTOL * fabs(want[i])) {
            printf("FAIL %s[%d] = %.9g, expected %.9g\n", what, i, got[i], want[i]);
            failures++;
        }
    }
}

static void expect_status(const char *what, int got, int want)
{
    if (got != want) {
        printf("FAIL %s returned %d, expected %d\n", what, got, want);
        failures++;
    }
}

static void fill(float *a, int count, float value)
{
    for (int i = 0; i < count; i++)
        a[i] = value;
}

/* The known sparse steps, through `step` (the runtime-hyperparameter kernel or the baked one). */
typedef int sparse_kernel(float *, float *, float *, int64_t, int64_t, const int64_t *,
                          const float *, int64_t, const lazyadam_hparams *);

static void sparse_steps(const char *name, sparse_kernel *step, const lazyadam_hparams *hp1,
                         double var1, const double var2[ROWS])
{
    float var[ROWS * ROW_SIZE], m[ROWS * ROW_SIZE], v[ROWS * ROW_SIZE];
    float values[2 * ROW_SIZE];
    fill(var, ROWS * ROW_SIZE, 1.0f);
    fill(m, ROWS * ROW_SIZE, 1.0f);
    fill(v, ROWS * ROW_SIZE, 1.0f);
    fill(values, 2 * ROW_SIZE, 0.1f);

    /* Step 1: gradient 0.1 on rows 0 and 1; row 2 keeps its values (lazy). */
    const int64_t rows01[2] = {0, 1};
    expect_status(name, step(var, m, v, ROWS, ROW_SIZE, rows01, values, 2, hp1), LAZYADAM_OK);
    const double var_1[] = {var1, var1, var1, var1, 1, 1}, m_1[] = {0.91, 0.91, 0.91, 0.91, 1, 1},
                 v_1[] = {0.99901, 0.99901, 0.99901, 0.99901, 1, 1};
    expect("step 1 var", var, 6, var_1);
    expect("step 1 m", m, 6, m_1);
    expect("step 1 v", v, 6, v_1);

    /* Step 2: row 1 twice, so its gradient is 0.1 + 0.1; rows 0 and 2 keep their values. */
    lazyadam_hparams hp2 = *hp1;
    hp2.beta1_power = 0.81;
    hp2.beta2_power = 0.998001;
    const int64_t row11[2] = {1, 1};
    expect_status(name, step(var, m, v, ROWS, ROW_SIZE, row11, values, 2, &hp2), LAZYADAM_OK);
    const double var_2[] = {var2[0], var2[0], var2[1], var2[1], var2[2], var2[2]},
                 m_2[] = {0.91, 0.91, 0.839, 0.839, 1, 1},
                 v_2[] = {0.99901, 0.99901, 0.99805099, 0.99805099, 1, 1};
    expect("step 2 var", var, 6, var_2);
    expect("step 2 m", m, 6, m_2);
    expect("step 2 v", v, 6, v_2);

    /* Bad input: an error code, and nothing written. */
    float before[ROWS * ROW_SIZE];
    memcpy(before, var, sizeof var);
    const int64_t bad[2] = {0, ROWS};
    expect_status("index out of range", step(var, m, v, ROWS, ROW_SIZE, bad, values, 2, &hp2),
                  LAZYADAM_EINDEX);
    expect_status("null pointer", step(var, NULL, v, ROWS, ROW_SIZE, rows01, values, 2, &hp2),
                  LAZYADAM_ENULL);
    expect_status("negative size", step(var, m, v, ROWS, ROW_SIZE, rows01, values, -1, &hp2),
                  LAZYADAM_ESIZE);
    if (memcmp(before, var, sizeof var) != 0) {
        printf("FAIL %s wrote var on bad input\n", name);
        failures++;
    }
    printf("%-28s var row 1 after two steps: %.7f\n", name, var[2]);
}

int main(void)
{
    const lazyadam_hparams hp = {.lr = 0.001, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                 .weight_decay = 0.0, .loss_scale = 1.0,
                                 .beta1_power = 0.9, .beta2_power = 0.999};
    const double plain[ROWS] = {0.99971209, 0.999514467, 1.0};
    sparse_steps("lazyadam_sparse_f32_i64", lazyadam_sparse_f32_i64, &hp, 0.9997121, plain);

    /* beta1 and beta2 are baked into ship_sparse_nesterov: their fields are ignored. */
    lazyadam_hparams ignored = hp;
    ignored.beta1 = ignored.beta2 = -1.0;
    const double nesterov[ROWS] = {0.999737717, 0.999555145, 1.0};
    sparse_steps("ship_sparse_nesterov", ship_sparse_nesterov, &ignored, 0.99973774, nesterov);

    /* Dense: gradient 1 (the known value), then 0.5. */
    float var[4], m[4], v[4], grad[4];
    fill(var, 4, 1.0f);
    fill(m, 4, 1.0f);
    fill(v, 4, 1.0f);
    fill(grad, 4, 1.0f);
    expect_status("dense", lazyadam_dense_f32(var, m, v, grad, 4, &hp), LAZYADAM_OK);
    const double var_1[] = {0.9996838, 0.9996838, 0.9996838, 0.9996838};
    expect("dense step 1 var", var, 4, var_1);
    lazyadam_hparams hp2 = hp;
    hp2.beta1_power = 0.81;
    hp2.beta2_power = 0.998001;
    fill(grad, 4, 0.5f);
    expect_status("dense", lazyadam_dense_f32(var, m, v, grad, 4, &hp2), LAZYADAM_OK);
    const double var_2[] = {0.999460137, 0.999460137, 0.999460137, 0.999460137},
                 m_2[] = {0.95, 0.95, 0.95, 0.95}, v_2[] = {0.99925, 0.99925, 0.99925, 0.99925};
    expect("dense step 2 var", var, 4, var_2);
    expect("dense step 2 m", m, 4, m_2);
    expect("dense step 2 v", v, 4, v_2);
    expect_status("dense negative size", lazyadam_dense_f32(var, m, v, grad, -4, &hp2),
                  LAZYADAM_ESIZE);
    printf("%-28s var after two steps:       %.7f\n", "lazyadam_dense_f32", var[0]);

    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
