# Tests of the Julia side of crossode's Julia backend. They need Julia 1.10/1.11 with this project's deps:
#
#     julia --project=julia -e 'using Pkg; Pkg.instantiate(); Pkg.test()'
#     julia --project=julia julia/test/runtests.jl            # the same, without Pkg.test
#
# The reference is the closed form of a linear ODE y' = A(p) y: y(t) = exp(A t) y0, and the derivative of exp
# in direction E (the Frechet derivative) from the block-matrix identity
#     exp([X E; 0 X]) = [exp(X) L(X, E); 0 exp(X)].

using Test
using LinearAlgebra: dot

include(joinpath(@__DIR__, "..", "src", "CrossODE.jl"))
using .CrossODE

# y' = A y with A = [p1 p2; p3 p4] (flat parameters row-major, like crossode's `linear` problem)
const LINEAR_SRC = """
let
    function rhs_oop(u, p, t)
        return [
            p[1] * u[1] + p[2] * u[2],
            p[3] * u[1] + p[4] * u[2],
        ]
    end
    function rhs_iip!(du, u, p, t)
        du[1] = p[1] * u[1] + p[2] * u[2]
        du[2] = p[3] * u[1] + p[4] * u[2]
        return nothing
    end
    (oop = rhs_oop, iip = rhs_iip!)
end
"""

amatrix(p) = [p[1] p[2]; p[3] p[4]]

function expm_frechet(X, E)
    n = size(X, 1)
    M = [X E; zeros(n, n) X]
    return exp(M)[1:n, (n + 1):(2n)]
end

"""Loss and exact gradients of the linear problem from t0 = 0; W (n_state, n_save) or nothing (sum of squares)."""
function closed_form(p, u0, ts, W)
    A = amatrix(p)
    loss, du0, dp = 0.0, zeros(2), zeros(4)
    for (k, t) in enumerate(ts)
        Phi = exp(A * t)
        y = Phi * u0
        c = W === nothing ? y : W[:, k]  # dL/dy(t_k)
        loss += W === nothing ? sum(abs2, y) / 2 : dot(c, y)
        du0 .+= transpose(Phi) * c
        for j in 1:4
            E = zeros(2, 2)
            E[div(j - 1, 2) + 1, mod(j - 1, 2) + 1] = t  # d(A t)/dp_j
            dp[j] += dot(c, expm_frechet(A * t, E) * u0)
        end
    end
    return loss, du0, dp
end

const P0 = [-0.5, 1.0, -1.0, -0.3]
const U0 = [1.0, 0.5]

relerr(a, b) = sqrt(sum(abs2, a .- b)) / max(sqrt(sum(abs2, b)), 1.0e-300)

function linear_cell(; sensealg = "GaussAdjoint", vjp = "auto", checkpointing = false, iip = true,
        alg = "Tsit5", saveat = [1.0], weights = nothing, adaptive = true, dt = nothing, tstops = nothing,
        maxiters = 100_000, tol = 1.0e-12)
    return build(; src = LINEAR_SRC, iip, u0 = U0, p = P0, t0 = 0.0, t1 = 1.0, saveat, alg, sensealg, vjp,
        checkpointing, abstol = tol, reltol = tol, quad_abstol = tol, quad_reltol = tol, dt, adaptive, tstops,
        maxiters, loss_kind = weights === nothing ? "sum_squares" : "linear", weights)
end

@testset "CrossODE" begin
    @testset "MLP layout: row-major W from Julia's column-major reshape" begin
        p = collect(1.0:6.0)
        # crossode flattens W (out = 3, in = 2) row-major: W = [1 2; 3 4; 5 6]
        @test permutedims(reshape(p[1:6], 2, 3)) == [1.0 2.0; 3.0 4.0; 5.0 6.0]
    end

    @testset "status_of" begin
        @test status_of(CrossODE.ReturnCode.Success) == "ok"
        @test status_of(CrossODE.ReturnCode.Terminated) == "ok"
        @test status_of(CrossODE.ReturnCode.MaxIters) == "max_steps"
        @test status_of(CrossODE.ReturnCode.DtLessThanMin) == "step_size_too_small"
        @test status_of(CrossODE.ReturnCode.Unstable) == "diverged"
        @test status_of(CrossODE.ReturnCode.ConvergenceFailure) == "solver_error"
        @test CrossODE.retcode_name(CrossODE.ReturnCode.MaxIters) == "MaxIters"
    end

    @testset "forward solve matches exp(A t) y0" begin
        ts = [0.25, 0.5, 1.0]
        res = solve_cell(linear_cell(saveat = ts))
        @test res.status == "ok"
        @test size(res.ys) == (2, 3)  # (n_state, n_save): Python transposes
        for (k, t) in enumerate(ts)
            @test res.ys[:, k] ≈ exp(amatrix(P0) * t) * U0 rtol = 1.0e-9
        end
        @test res.nf > 0 && res.naccept > 0 && res.calls > 0
    end

    cases = [
        ("ReverseDiffAdjoint", "auto", false, true),
        ("ForwardDiffSensitivity", "auto", false, true),
        ("BacksolveAdjoint", "auto", false, true),
        ("BacksolveAdjoint", "zygote", false, false),
        ("InterpolatingAdjoint", "auto", false, true),
        ("InterpolatingAdjoint", "auto", true, true),
        ("InterpolatingAdjoint", "reversediff", false, true),
        ("QuadratureAdjoint", "auto", false, true),
        ("GaussAdjoint", "auto", false, true),
        ("GaussAdjoint", "enzyme", false, true),
        ("GaussAdjoint", "zygote", false, false),
    ]
    @testset "gradient vs closed form: $kind(vjp=$vjp, checkpointing=$ckpt, iip=$iip)" for (kind, vjp, ckpt, iip) in cases
        loss, du0, dp = closed_form(P0, U0, [1.0], nothing)
        res = gradient_cell(linear_cell(; sensealg = kind, vjp, checkpointing = ckpt, iip))
        @test res.status == "ok"
        @test res.loss ≈ loss rtol = 1.0e-9
        @test relerr(res.du0, du0) < 1.0e-6
        @test relerr(res.dp, dp) < 1.0e-6
        @test res.nf > 0 && res.calls_forward > 0 && res.calls_backward >= 0
    end

    @testset "save_indices" begin
        @test save_indices([0.0, 0.2, 0.5, 1.0], [0.2, 1.0]) == [2, 4]
        @test save_indices([0.0, 0.2, 0.5], [0.2, 1.0]) === nothing
        @test save_indices([1.0, 0.5, 0.0], [0.5, 0.0]) == [2, 3]  # backwards in time
    end

    @testset "linear loss, saves $(ts) (layout of the weights), $kind(checkpointing=$ckpt)" for ts in
            ([0.2, 0.5, 0.7, 1.0], [0.2, 0.5, 0.7]), (kind, ckpt) in (("GaussAdjoint", false),
            ("ForwardDiffSensitivity", false), ("ReverseDiffAdjoint", false), ("BacksolveAdjoint", false),
            ("InterpolatingAdjoint", true), ("QuadratureAdjoint", false))
        W = [1.0 -2.0 0.5 3.0; 0.25 1.5 -1.0 2.0][:, 1:length(ts)]  # (n_state, n_save)
        loss, du0, dp = closed_form(P0, U0, ts, W)
        res = gradient_cell(linear_cell(; sensealg = kind, checkpointing = ckpt, saveat = ts, weights = W))
        @test res.status == "ok"
        @test res.loss ≈ loss rtol = 1.0e-9
        @test relerr(res.du0, du0) < 1.0e-6
        @test relerr(res.dp, dp) < 1.0e-6
        sres = solve_cell(linear_cell(; saveat = ts, weights = W))
        @test size(sres.ys) == (2, length(ts))
    end

    @testset "fixed steps on the grid: RK4, dt = 0.01" begin
        grid = collect(range(0.0, 1.0; length = 101))
        loss, du0, dp = closed_form(P0, U0, [1.0], nothing)
        res = gradient_cell(linear_cell(; sensealg = "ReverseDiffAdjoint", alg = "RK4", adaptive = false,
            dt = 0.01 * (1 + 1.0e-9), tstops = grid))
        @test res.status == "ok"
        @test res.naccept == 100
        @test relerr(res.dp, dp) < 1.0e-7
        @test relerr(res.du0, du0) < 1.0e-7
    end

    @testset "failed solves report a status, not a gradient" begin
        for kind in ("GaussAdjoint", "InterpolatingAdjoint", "BacksolveAdjoint", "ReverseDiffAdjoint",
                "ForwardDiffSensitivity")
            res = gradient_cell(linear_cell(; sensealg = kind, maxiters = 3))
            @test res.status == "max_steps"
            @test res.retcode == "MaxIters"
            @test all(iszero, res.dp)
        end
        @test solve_cell(linear_cell(; maxiters = 3)).status == "max_steps"
    end

    @testset "errors name the valid choices" begin
        @test_throws ArgumentError make_alg("Dopri5")
        @test_throws ArgumentError make_vjp("tracker")
        @test_throws ArgumentError make_sensealg("MALI")
    end
end
