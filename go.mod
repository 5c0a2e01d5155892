module github.com/nogil-go/nogil

go 1.24
