# Type and error codes shared with tinyingest/schema.py (TypeCode) and
# tinyingest/errors.py (ErrorCode): the numbers must match.

cdef enum TypeCode:
    TYPE_INT8 = 1
    TYPE_INT16 = 2
    TYPE_INT32 = 3
    TYPE_INT64 = 4
    TYPE_UINT8 = 5
    TYPE_UINT16 = 6
    TYPE_UINT32 = 7
    TYPE_UINT64 = 8
    TYPE_FLOAT32 = 9
    TYPE_FLOAT64 = 10
    TYPE_STRING = 11
    TYPE_DATE = 12
    TYPE_DATETIME = 13
    TYPE_BOOL = 14
    TYPE_UUID = 15
    TYPE_FIXED_STRING = 16
    TYPE_ENUM8 = 17
    TYPE_ENUM16 = 18
    TYPE_DATE32 = 19
    TYPE_IPV4 = 20
    TYPE_DATETIME64 = 21
    TYPE_INT128 = 22
    TYPE_UINT128 = 23
    TYPE_INT256 = 24
    TYPE_UINT256 = 25
    TYPE_DECIMAL32 = 26
    TYPE_DECIMAL64 = 27
    TYPE_DECIMAL128 = 28
    TYPE_DECIMAL256 = 29
    TYPE_IPV6 = 30

cdef enum ErrorCode:
    ERR_NONE = 0
    ERR_INVALID_JSON = 1
    ERR_NOT_OBJECT = 2
    ERR_BAD_VALUE = 3
    ERR_OUT_OF_RANGE = 4
    ERR_NULL = 5
    ERR_INVALID_UTF8 = 6
    ERR_ROW_TOO_LONG = 7
    ERR_TOO_DEEP = 8
    ERR_DUPLICATE_KEY = 9
    ERR_FIELD_COUNT = 10
    ERR_BAD_CSV = 11
    ERR_MISSING = 12
    # not a row error: malloc failed; feed() raises MemoryError
    ERR_NO_MEMORY = 100

cdef enum:
    MAX_DEPTH = 64          # errors.MAX_DEPTH
    MAX_ERROR_VALUE = 256   # errors.MAX_ERROR_VALUE

# What a row holds for one column, between the scan and the conversion.
cdef enum ValueKind:
    KIND_MISSING = 0
    KIND_NULL = 1
    KIND_TEXT = 2           # JSON number/true/false, or a CSV field: bytes as they are
    KIND_JSON_STRING = 3    # JSON string content, still escaped if `escaped`
    KIND_NESTED = 4         # JSON object or array, raw text (compacted when stored)
    KIND_CSV_TEXT = 5       # a CSV field for an Array/Map column: its literal's text
