/* knoway: return codes shared by every module. */
#ifndef KNOWAY_KW_H
#define KNOWAY_KW_H

/* One return-code enum for the whole code base (phases and filters return these). */
enum kw_rc {
    KW_OK = 0,        /* done, go on */
    KW_ERROR = -1,    /* failed; details were reported to the caller's diagnostics */
    KW_AGAIN = -2,    /* suspended; an event will resume the work */
    KW_DECLINED = -3, /* not mine; the next handler decides */
    KW_DONE = -4,     /* a response was produced; stop the phase chain */
    KW_NOMEM = -5,    /* failed for want of memory (an arena's limit or the process's) */
};

#define KW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The version string of the build ("0.1.0"). */
const char *kw_version(void);

#endif
