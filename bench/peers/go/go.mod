module keel.bench/peers/go

go 1.19
