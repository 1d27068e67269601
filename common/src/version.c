#include "knoway/kw.h"

const char *kw_version(void)
{
    return KW_VERSION;
}
