#include <stdlib.h>

#include "knoway/heap.h"
#include "knoway/kw.h"
#include "testutil.h"

#define N 2000

static void test_order_and_removal(void **state)
{
    (void)state;
    static struct kw_heap_node nodes[N];
    struct kw_heap h;
    kw_heap_init(&h);
    srand(7);
    for (int i = 0; i < N; i++) {
        kw_heap_node_init(&nodes[i]);
        assert_int_equal(kw_heap_set(&h, &nodes[i], rand() % 1000), KW_OK);
    }
    for (int i = 0; i < N; i += 3) /* remove a third, move a third */
        kw_heap_remove(&h, &nodes[i]);
    for (int i = 1; i < N; i += 3)
        assert_int_equal(kw_heap_set(&h, &nodes[i], rand() % 1000), KW_OK);
    kw_heap_remove(&h, &nodes[0]); /* not in the heap any more: a no-op */
    int64_t last = -1;
    size_t count = 0;
    struct kw_heap_node *top;
    while ((top = kw_heap_top(&h)) != NULL) {
        assert_true(top->key >= last);
        last = top->key;
        kw_heap_remove(&h, top);
        assert_int_equal(top->idx, KW_HEAP_NONE);
        count++;
    }
    assert_int_equal(count, N - (N + 2) / 3);
    kw_heap_cleanup(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_removal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
